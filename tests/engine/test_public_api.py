import artifact_uploader


def test_all_is_sorted_and_complete() -> None:
    names = artifact_uploader.__all__
    assert names == sorted(names)
    public = {n for n in dir(artifact_uploader) if not n.startswith("_")} - {"annotations"}
    public -= {"providers", "testing", "TYPE_CHECKING", "Any"}
    missing = public - set(names)
    assert not missing, f"public names missing from __all__: {missing}"
    for name in names:
        assert hasattr(artifact_uploader, name), name


def test_lazy_providers_resolve() -> None:
    assert artifact_uploader.LocalProvider.scheme == "file"
    assert artifact_uploader.S3Provider.__name__ == "S3Provider"


def test_error_tree_roots() -> None:
    e = artifact_uploader
    for cls in (
        e.ConfigError,
        e.ObjectExistsError,
        e.UploadFailedError,
        e.UploaderClosedError,
        e.ProviderError,
        e.SourceFileError,
        e.StagingError,
    ):
        assert issubclass(cls, e.UploadError)
    assert issubclass(e.ConfigError, ValueError)
    assert issubclass(e.ObjectExistsError, FileExistsError)
    assert issubclass(e.UploaderClosedError, RuntimeError)
    assert e.is_transient(e.ProviderError("x", transient=True))
    assert not e.is_transient(e.ProviderError("x"))

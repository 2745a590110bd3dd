"""napari-side pieces of napari-sam2 (dock widget helpers); nothing here is needed by the engine or the CLI."""

"""Tests for napari_sam2.movie_files: lazy opening of TIFF / OME-TIFF, .npy and zarr movies as (T, Y, X[, C])."""

import numpy as np
import pytest
import tifffile
import zarr

from napari_sam2.movie_files import Movie, MovieFileError, ReorderedFrames, open_movie


def _random(shape, dtype=np.uint16, seed=0):
    return np.random.default_rng(seed).integers(0, 1000, size=shape).astype(dtype)


def _corrupt_page_data(path, page_index):
    """Overwrite the (compressed) pixel data of one TIFF page with garbage, leaving every header intact.

    A reader that decodes frames only when asked still reads the other frames; one that decodes the whole
    stack up front fails on open.
    """
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[page_index]
        segments = list(zip(page.dataoffsets, page.databytecounts))
    with open(path, "r+b") as stream:
        for offset, count in segments:
            stream.seek(offset)
            stream.write(b"\xff" * count)


def _all_frames(movie):
    return np.stack([np.asarray(movie.data[t]) for t in range(movie.shape[0])])


# --------------------------------------------------------------------------- TIFF

def test_uncompressed_tiff_is_memory_mapped(tmp_path):
    movie_data = _random((5, 12, 16))
    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, movie_data, photometric="minisblack", metadata={"axes": "TYX"})
    movie = open_movie(path)
    assert isinstance(movie, Movie)
    assert isinstance(movie.data, np.memmap)
    assert movie.shape == (5, 12, 16)
    assert movie.axis == "T"
    assert movie.source == str(path)
    np.testing.assert_array_equal(movie.data, movie_data)
    np.testing.assert_array_equal(movie.data[3], movie_data[3])


def test_tiff_without_axes_metadata_uses_napari_order(tmp_path):
    """A stack written with no axes metadata (tifffile calls the first axis Q) is tracked along that axis."""
    movie_data = _random((4, 12, 16))
    path = tmp_path / "movie.tiff"
    tifffile.imwrite(path, movie_data, photometric="minisblack")
    movie = open_movie(path)
    assert movie.shape == (4, 12, 16)
    assert movie.axis == "T"
    np.testing.assert_array_equal(_all_frames(movie), movie_data)


def test_compressed_tiff_is_read_lazily(tmp_path):
    movie_data = _random((4, 12, 16))
    path = tmp_path / "compressed.tif"
    tifffile.imwrite(path, movie_data, photometric="minisblack", metadata={"axes": "TYX"}, compression="zlib")
    _corrupt_page_data(path, 3)  # frame 3 cannot be decoded any more: nothing may touch it
    movie = open_movie(path)
    assert not isinstance(movie.data, np.ndarray)
    assert movie.shape == (4, 12, 16)
    assert movie.axis == "T"
    np.testing.assert_array_equal(np.asarray(movie.data[2]), movie_data[2])
    np.testing.assert_array_equal(np.asarray(movie.data[0]), movie_data[0])
    with pytest.raises(Exception):  # noqa: B017 - proves that frame 3 is decoded only when read
        np.asarray(movie.data[3])


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_ome_tiff_tcyx_becomes_tyxc(tmp_path, compression):
    movie_data = _random((4, 2, 10, 14))
    path = tmp_path / "movie.ome.tif"
    tifffile.imwrite(path, movie_data, photometric="minisblack", metadata={"axes": "TCYX"}, compression=compression)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome and tif.series[0].axes == "TCYX"
    if compression:
        _corrupt_page_data(path, 7)  # the last plane (t=3, c=1)
    movie = open_movie(path)
    assert not isinstance(movie.data, np.ndarray)
    assert movie.shape == (4, 10, 14, 2)
    assert movie.data.shape == (4, 10, 14, 2)
    assert movie.data.ndim == 4
    assert movie.data.dtype == np.uint16
    assert len(movie.data) == 4
    assert movie.axis == "T"
    for t in range(3 if compression else 4):
        frame = movie.data[t]
        assert isinstance(frame, np.ndarray) and frame.shape == (10, 14, 2)
        for c in range(2):
            np.testing.assert_array_equal(frame[..., c], movie_data[t, c])
    if compression:
        with pytest.raises(Exception):  # noqa: B017 - planes are decoded only when their frame is read
            movie.data[3]


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_pyramidal_tiff_reads_full_resolution(tmp_path, compression):
    """A TIFF with a lower-resolution level (SubIFDs) gives the full-resolution level, not a zarr group."""
    movie_data = _random((3, 32, 48))
    path = tmp_path / "pyramid.ome.tif"
    with tifffile.TiffWriter(path) as writer:
        writer.write(movie_data, subifds=1, photometric="minisblack", metadata={"axes": "TYX"},
                     compression=compression)
        writer.write(movie_data[:, ::2, ::2], subfiletype=1, photometric="minisblack", compression=compression)
    with tifffile.TiffFile(path) as tif:
        assert len(tif.series[0].levels) == 2
    movie = open_movie(path)
    assert movie.shape == (3, 32, 48)
    np.testing.assert_array_equal(_all_frames(movie), movie_data)


def test_imagej_zyx_is_tracked_along_z(tmp_path):
    stack = _random((6, 12, 16), dtype=np.uint8)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, stack, imagej=True, metadata={"axes": "ZYX"})
    movie = open_movie(path)
    assert movie.axis == "Z"
    assert movie.shape == (6, 12, 16)
    np.testing.assert_array_equal(_all_frames(movie), stack)


def test_time_and_depth_together_are_refused(tmp_path):
    path = tmp_path / "tzyx.tif"
    tifffile.imwrite(path, _random((3, 2, 12, 16), dtype=np.uint8), imagej=True, metadata={"axes": "TZYX"})
    with pytest.raises(MovieFileError) as info:
        open_movie(path)
    message = str(info.value)
    assert "T" in message and "Z" in message
    assert "T, Z" in message or "(T, Z)" in message
    assert "more than one axis" in message


def test_time_with_single_z_plane_works(tmp_path):
    movie_data = _random((3, 1, 12, 16), dtype=np.uint8)
    path = tmp_path / "tzyx.tif"
    tifffile.imwrite(path, movie_data, imagej=True, metadata={"axes": "TZYX"})
    movie = open_movie(path)
    assert movie.axis == "T"
    assert movie.shape == (3, 12, 16)
    np.testing.assert_array_equal(_all_frames(movie), movie_data[:, 0])


def test_npy_time_with_single_z_plane_is_reordered(tmp_path):
    """Same layout without tifffile's squeezing: the singleton Z axis is indexed away frame by frame."""
    movie_data = _random((3, 1, 12, 16))
    path = tmp_path / "tzyx.npy"
    np.save(path, movie_data)
    movie = open_movie(path, axes="TZYX")
    assert movie.axis == "T"
    assert movie.shape == (3, 12, 16)
    np.testing.assert_array_equal(_all_frames(movie), movie_data[:, 0])
    with pytest.raises(MovieFileError, match="more than one axis"):
        np.save(path, _random((3, 2, 12, 16)))
        open_movie(path, axes="TZYX")


def test_single_2d_image_becomes_one_frame(tmp_path):
    image = _random((12, 16))
    path = tmp_path / "image.tif"
    tifffile.imwrite(path, image, photometric="minisblack")
    movie = open_movie(path)
    assert movie.shape == (1, 12, 16)
    assert len(movie.data) == 1
    np.testing.assert_array_equal(movie.data[0], image)
    with pytest.raises(IndexError):
        movie.data[1]


def test_rgb_image_has_channel_last(tmp_path):
    image = _random((12, 16, 3), dtype=np.uint8)
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, image, photometric="rgb")
    with tifffile.TiffFile(path) as tif:
        assert tif.series[0].axes == "YXS"
    movie = open_movie(path)
    assert movie.shape == (1, 12, 16, 3)
    np.testing.assert_array_equal(movie.data[0], image)


def test_rgb_movie_has_channel_last(tmp_path):
    movie_data = _random((4, 12, 16, 3), dtype=np.uint8)
    path = tmp_path / "rgb_movie.tif"
    tifffile.imwrite(path, movie_data, photometric="rgb", metadata={"axes": "TYXS"})
    with tifffile.TiffFile(path) as tif:
        assert tif.series[0].axes == "TYXS"
    movie = open_movie(path)
    assert movie.axis == "T"
    assert movie.shape == (4, 12, 16, 3)
    np.testing.assert_array_equal(_all_frames(movie), movie_data)


def test_planar_rgb_movie_has_channel_last(tmp_path):
    """Separate colour planes (T, S, Y, X) on disk still come back as (T, Y, X, S)."""
    movie_data = _random((4, 3, 12, 16), dtype=np.uint8)
    path = tmp_path / "planar.tif"
    tifffile.imwrite(path, movie_data, photometric="rgb", planarconfig="separate", metadata={"axes": "TSYX"})
    movie = open_movie(path)
    assert movie.shape == (4, 12, 16, 3)
    for t in range(4):
        np.testing.assert_array_equal(movie.data[t], np.moveaxis(movie_data[t], 0, -1))


def test_two_channel_axes_are_refused(tmp_path):
    path = tmp_path / "cs.npy"
    np.save(path, _random((2, 2, 12, 16, 3), dtype=np.uint8))
    with pytest.raises(MovieFileError, match="two channel axes"):
        open_movie(path, axes="TCYXS")


# --------------------------------------------------------------------------- .npy

@pytest.mark.parametrize("shape, expected", [((12, 16), (1, 12, 16)), ((5, 12, 16), (5, 12, 16)),
                                             ((5, 12, 16, 3), (5, 12, 16, 3))])
def test_npy_default_axes_by_ndim(tmp_path, shape, expected):
    array = _random(shape, dtype=np.float32)
    path = tmp_path / "movie.npy"
    np.save(path, array)
    movie = open_movie(path)
    assert movie.shape == expected
    assert movie.axis == "T"
    np.testing.assert_array_equal(_all_frames(movie), array.reshape(expected))


def test_npy_is_memory_mapped(tmp_path):
    array = _random((5, 12, 16))
    path = tmp_path / "movie.npy"
    np.save(path, array)
    movie = open_movie(path)
    assert isinstance(movie.data, np.memmap)
    np.testing.assert_array_equal(movie.data[4], array[4])


def test_npy_axes_override(tmp_path):
    array = _random((5, 12, 16))
    path = tmp_path / "stack.npy"
    np.save(path, array)
    movie = open_movie(path, axes="ZYX")
    assert movie.axis == "Z"
    assert isinstance(movie.data, np.memmap)
    assert open_movie(path, axes="zyx").axis == "Z"  # lower case is accepted
    # channel-first 4-D data named explicitly is reordered
    array4 = _random((5, 2, 12, 16))
    np.save(path, array4)
    movie = open_movie(path, axes="TCYX")
    assert movie.shape == (5, 12, 16, 2)
    np.testing.assert_array_equal(movie.data[1][..., 1], array4[1, 1])


def test_npy_axes_override_of_wrong_length(tmp_path):
    path = tmp_path / "movie.npy"
    np.save(path, _random((5, 12, 16)))
    with pytest.raises(MovieFileError) as info:
        open_movie(path, axes="TCYX")
    message = str(info.value)
    assert "3 axes" in message and "'TCYX'" in message and "(5, 12, 16)" in message


def test_npy_without_default_axes_asks_for_them(tmp_path):
    path = tmp_path / "movie5d.npy"
    np.save(path, np.zeros((2, 2, 2, 4, 4), np.uint8))
    with pytest.raises(MovieFileError, match="--axes"):
        open_movie(path)


def test_axes_without_y_and_x_are_refused(tmp_path):
    path = tmp_path / "movie.npy"
    np.save(path, _random((5, 12, 16)))
    with pytest.raises(MovieFileError, match="Y and X"):
        open_movie(path, axes="TYY")


def test_unknown_axis_letter_is_refused(tmp_path):
    path = tmp_path / "movie.npy"
    np.save(path, _random((2, 5, 12, 16)))
    with pytest.raises(MovieFileError, match="'W'"):
        open_movie(path, axes="WTYX")


# --------------------------------------------------------------------------- zarr

def test_zarr_array_store(tmp_path):
    array = _random((5, 12, 16))
    path = tmp_path / "movie.zarr"
    stored = zarr.create_array(store=str(path), shape=array.shape, dtype=array.dtype, chunks=(1, 12, 16))
    stored[:] = array
    movie = open_movie(path)
    assert isinstance(movie.data, zarr.Array)
    assert movie.shape == (5, 12, 16)
    assert movie.axis == "T"
    np.testing.assert_array_equal(movie.data[3], array[3])


def test_zarr_array_in_plain_directory(tmp_path):
    """A zarr store need not be named *.zarr."""
    array = _random((3, 12, 16))
    path = tmp_path / "store"
    stored = zarr.open(str(path), mode="w", shape=array.shape, dtype=array.dtype, chunks=(1, 12, 16))
    stored[:] = array
    movie = open_movie(path)
    np.testing.assert_array_equal(_all_frames(movie), array)


def test_zarr_group_with_one_array(tmp_path):
    array = _random((4, 12, 16))
    path = tmp_path / "group.zarr"
    group = zarr.open_group(str(path), mode="w")
    group.create_array("raw", shape=array.shape, dtype=array.dtype, chunks=(1, 12, 16))[:] = array
    movie = open_movie(path)
    assert movie.shape == (4, 12, 16)
    np.testing.assert_array_equal(_all_frames(movie), array)


def test_zarr_group_with_two_arrays_is_refused(tmp_path):
    path = tmp_path / "group.zarr"
    group = zarr.open_group(str(path), mode="w")
    group.create_array("raw", shape=(2, 8, 8), dtype="u1")
    group.create_array("labels", shape=(2, 8, 8), dtype="u1")
    with pytest.raises(MovieFileError) as info:
        open_movie(path)
    message = str(info.value)
    assert "raw" in message and "labels" in message and "2 arrays" in message


def _ome_zarr(path, array, axes, nested=False, zarr_format=3):
    multiscales = [{"axes": [{"name": name, "type": "space"} for name in axes],
                    "datasets": [{"path": "0"}, {"path": "1"}]}]
    group = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    group.attrs.update({"ome": {"version": "0.5", "multiscales": multiscales}} if nested
                       else {"multiscales": multiscales})
    group.create_array("0", shape=array.shape, dtype=array.dtype, chunks=(1,) + array.shape[1:])[:] = array
    half = array[..., ::2, ::2]
    group.create_array("1", shape=half.shape, dtype=half.dtype)[:] = half  # a lower resolution level


@pytest.mark.parametrize("nested, zarr_format", [(False, 3), (False, 2), (True, 3)])
def test_ome_zarr_tcyx_becomes_tyxc(tmp_path, nested, zarr_format):
    array = _random((4, 2, 10, 14))
    path = tmp_path / "image.ome.zarr"
    _ome_zarr(path, array, "tcyx", nested=nested, zarr_format=zarr_format)
    movie = open_movie(path)
    assert movie.shape == (4, 10, 14, 2)  # full resolution, channel last
    assert movie.axis == "T"
    for t in range(4):
        for c in range(2):
            np.testing.assert_array_equal(movie.data[t][..., c], array[t, c])


def test_ome_zarr_single_channel_zyx(tmp_path):
    array = _random((1, 6, 10, 14))
    path = tmp_path / "stack.ome.zarr"
    _ome_zarr(path, array, "czyx")
    movie = open_movie(path)
    assert movie.axis == "Z"
    assert movie.shape == (6, 10, 14)
    np.testing.assert_array_equal(_all_frames(movie), array[0])


def test_directory_that_is_not_zarr(tmp_path):
    folder = tmp_path / "not_zarr"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    with pytest.raises(MovieFileError, match="not a zarr store"):
        open_movie(folder)


# --------------------------------------------------------------------------- --axes against the file's axes

def test_axes_that_move_y_and_x_of_a_tiff_are_refused(tmp_path):
    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, _random((4, 12, 16)), photometric="minisblack", metadata={"axes": "TYX"})
    with pytest.raises(MovieFileError) as info:
        open_movie(path, axes="YXT")
    message = str(info.value)
    assert message.startswith("--axes YXT does not match the file's axes TYX (shape (4, 12, 16))")
    assert "\n" not in message


def test_axes_that_move_y_and_x_of_an_ome_zarr_are_refused(tmp_path):
    path = tmp_path / "image.ome.zarr"
    _ome_zarr(path, _random((4, 2, 10, 14)), "tcyx")
    with pytest.raises(MovieFileError, match=r"--axes TCXY does not match the file's axes TCYX \(shape \(4, 2, 10, 14\)\)"):
        open_movie(path, axes="TCXY")
    assert open_movie(path, axes="ZCYX").axis == "Z"  # renaming the other axes is allowed


def test_axes_may_rename_a_writers_default_labels(tmp_path):
    """ImageJ calls an unlabelled stack's first axis C: --axes TYX makes it a time-lapse again."""
    movie_data = _random((5, 12, 16), dtype=np.uint8)
    path = tmp_path / "imagej.tif"
    tifffile.imwrite(path, movie_data, imagej=True)
    assert open_movie(path).shape == (1, 12, 16, 5)  # read as one frame of five channels
    movie = open_movie(path, axes="TYX")
    assert movie.shape == (5, 12, 16) and movie.axis == "T" and movie.axes_from == "given"
    np.testing.assert_array_equal(_all_frames(movie), movie_data)


def test_tiff_without_axes_accepts_any_axes(tmp_path):
    """A (Y, X, T) array saved with no axes: tifffile's guess (QYX) is not the file's word, so --axes wins."""
    yxt = _random((12, 16, 5))
    path = tmp_path / "yxt.tif"
    tifffile.imwrite(path, yxt, photometric="minisblack")
    default = open_movie(path)
    assert default.axes == "TYX" and default.axes_from == "assumed"
    movie = open_movie(path, axes="YXT")
    assert movie.shape == (5, 12, 16)
    np.testing.assert_array_equal(_all_frames(movie), np.moveaxis(yxt, 2, 0))


def test_axes_hint_says_how_the_axes_were_chosen(tmp_path):
    path = tmp_path / "movie.npy"
    np.save(path, _random((4, 12, 16)))
    given = open_movie(path, axes="YXT")
    assert (given.axes, given.axes_from, given.file_shape) == ("YXT", "given", (4, 12, 16))
    assert given.layout() == "16 frames of 4 x 12 (Y x X)"
    assert given.axes_hint() == ("with --axes YXT, movie.npy (4, 12, 16) is read as 16 frames of 4 x 12 (Y x X) "
                                 "along T: are the axes right?")
    assumed = open_movie(path)
    assert assumed.axes_from == "assumed" and "records no axes, so TYX was assumed" in assumed.axes_hint()
    tiff = tmp_path / "movie.tif"
    tifffile.imwrite(tiff, _random((4, 12, 16)), photometric="minisblack", metadata={"axes": "ZYX"})
    from_file = open_movie(tiff)
    assert from_file.axes_from == "file" and from_file.axes_hint() == ""
    assert from_file.layout() == "4 slices of 12 x 16 (Y x X)"


# --------------------------------------------------------------------------- errors

def test_missing_file(tmp_path):
    with pytest.raises(MovieFileError, match="does not exist"):
        open_movie(tmp_path / "nothing.tif")


def test_unsupported_extension(tmp_path):
    path = tmp_path / "image.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(MovieFileError) as info:
        open_movie(path)
    message = str(info.value)
    assert "image.png" in message and "TIFF" in message and ".npy" in message and "zarr" in message


def test_movie_file_error_is_a_value_error():
    assert issubclass(MovieFileError, ValueError)


# --------------------------------------------------------------------------- ReorderedFrames

def _reordered():
    array = _random((3, 2, 6, 7))  # T, C, Y, X
    return array, ReorderedFrames(array, "TCYX", "T", "C")


def test_reordered_frames_shape_and_values():
    array, frames = _reordered()
    assert frames.shape == (3, 6, 7, 2)
    assert frames.ndim == 4 and frames.dtype == array.dtype and len(frames) == 3
    np.testing.assert_array_equal(frames[np.int64(2)], np.moveaxis(array[2], 0, -1))
    assert len(list(frames)) == 3  # iteration stops at the end (IndexError)


@pytest.mark.parametrize("index", [slice(0, 2), 1.0, (0, 1), True, np.bool_(False), [0, 1], "0"])
def test_reordered_frames_accept_only_integers(index):
    _, frames = _reordered()
    with pytest.raises(TypeError):
        frames[index]


@pytest.mark.parametrize("index", [3, 100, -1])
def test_reordered_frames_out_of_range(index):
    _, frames = _reordered()
    with pytest.raises(IndexError):
        frames[index]


def test_reordered_frames_without_track_axis():
    image = _random((6, 7))
    frames = ReorderedFrames(image, "YX", None, None)
    assert frames.shape == (1, 6, 7)
    np.testing.assert_array_equal(frames[0], image)


# --------------------------------------------------------------------------- integration with the engine

@pytest.mark.parametrize("kind", ["memmap", "ome-zlib", "zarr"])
def test_frame_source_reads_movie_data(tmp_path, kind):
    from napari_sam2.engine.frames import FrameSource

    if kind == "memmap":
        array = _random((4, 12, 16))
        path = tmp_path / "movie.tif"
        tifffile.imwrite(path, array, photometric="minisblack", metadata={"axes": "TYX"})
        expected = array
    elif kind == "ome-zlib":
        array = _random((4, 2, 12, 16))
        path = tmp_path / "movie.ome.tif"
        tifffile.imwrite(path, array, photometric="minisblack", metadata={"axes": "TCYX"}, compression="zlib")
        expected = np.moveaxis(array, 1, -1)
    else:
        array = _random((4, 12, 16))
        path = tmp_path / "movie.zarr"
        zarr.create_array(store=str(path), shape=array.shape, dtype=array.dtype, chunks=(1, 12, 16))[:] = array
        expected = array
    movie = open_movie(path)
    source = FrameSource(movie.data, channel=1 if expected.ndim == 4 else None)
    assert source.shape == (4, 12, 16)
    raw = source.read(2)
    np.testing.assert_array_equal(raw, expected[2, ..., 1] if expected.ndim == 4 else expected[2])
    normalized = source.normalized(3)
    assert normalized.shape == (12, 16, 3) and normalized.dtype == np.float32
    assert 0.0 <= normalized.min() <= normalized.max() <= 1.0

"""The README's first command, ``python -m napari_sam2.demo``: it runs end to end and says plainly when the weights
are random."""

from napari_sam2 import demo


def test_the_demo_says_its_masks_come_from_random_weights(capsys):
    demo.main(["--image-size", "128", "--frames", "2"])
    out = capsys.readouterr().out
    assert "RANDOM weights" in out and "meaningless" in out
    assert "tracked 2 frames" in out

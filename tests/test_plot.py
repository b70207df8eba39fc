"""`rssm-plot`: the mean or IQM of several runs' scalar with a bootstrap band, PNG and SVG."""

import numpy as np
import pytest
from torch.utils.tensorboard import SummaryWriter

from rssm.plot import aggregate, iqm, main


def test_iqm_is_the_mean_of_the_middle_half():
    assert iqm(np.array([1.0, 2.0, 3.0, 100.0])) == 2.5  # the middle two of four
    # Three values: a quarter of the first and last, all of the middle one (weights 0.25, 1, 0.25).
    assert iqm(np.array([0.0, 1.0, 10.0])) == pytest.approx((0.25 * 0 + 1 + 0.25 * 10) / 1.5)
    assert iqm(np.array([[4.0, 8.0, 1.0, 2.0, 100.0, 3.0, 5.0, 6.0]]))[0] == pytest.approx(np.mean([3, 4, 5, 6]))


def test_aggregate_takes_the_steps_two_runs_share_with_a_band_around_the_statistic():
    curves = [{0: 1.0, 10: 2.0, 20: 9.0}, {0: 3.0, 10: 4.0}, {0: 5.0}]
    steps, centre, low, high = aggregate(curves, "mean")
    assert list(steps) == [0, 10] and np.allclose(centre, [3.0, 3.0])
    assert (low <= centre).all() and (centre <= high).all()
    assert low[0] >= 1.0 and high[0] <= 5.0 and low[0] < high[0]  # resampled means of 1, 3 and 5
    same = aggregate([{0: 2.0}, {0: 2.0}], "iqm")
    assert same[2][0] == same[3][0] == 2.0


def write_runs(root, values_per_run):
    runs = []
    for i, values in enumerate(values_per_run):
        run = root / f"seed{i}"
        with SummaryWriter(run) as w:
            for step, v in enumerate(values):
                w.add_scalar("eval/return_mean", v, step * 1000)
        runs.append(str(run))
    return runs


def test_rssm_plot_writes_png_and_svg(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    runs = write_runs(tmp_path, [[1, 5, 9], [2, 6, 8], [0, 4]])
    main([*runs, "--out", str(tmp_path / "plots" / "curve.png"), "--target", "8"])
    assert (tmp_path / "plots" / "curve.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "curve.svg").read_text().lstrip().startswith("<?xml")
    main([*runs, "--each", "--statistic", "iqm", "--out", str(tmp_path / "each")])
    assert (tmp_path / "each.png").is_file() and "rssm-plot: wrote" in capsys.readouterr().out


def test_rssm_plot_errors_are_one_line(tmp_path, capsys):
    runs = write_runs(tmp_path, [[1, 2]])
    for argv, message in (([str(tmp_path / "nothing"), "--out", "x.png"], "holds no TensorBoard events"),
                          ([*runs, "--tag", "loss/none", "--out", "x.png"], "has no scalar 'loss/none'")):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1

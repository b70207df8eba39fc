"""`rssm-plot`: the mean or IQM of several runs' scalar with a bootstrap band, PNG and SVG; runs in groups, from
TensorBoard events or CSV files."""

from pathlib import Path

import numpy as np
import pytest
from torch.utils.tensorboard import SummaryWriter

from rssm.plot import aggregate, iqm, main, read_csv


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


def write_csv(path, rows, comment="# scores of another implementation\n"):
    path.write_text(comment + "step,value\n" + "".join(f"{s},{v}\n" for s, v in rows))
    return str(path)


def test_read_csv_skips_comments_and_reads_steps_and_values(tmp_path):
    path = write_csv(tmp_path / "a.csv", [(1000, 1.5), (2000, -3)])
    assert read_csv(Path(path)) == {1000: 1.5, 2000: -3.0}


def test_two_groups_one_from_csv_files_are_two_lines_each_with_its_band(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib.axes

    tensorboard = write_runs(tmp_path, [[1, 5, 9], [2, 6, 8]])  # steps 0, 1000, 2000
    csvs = [write_csv(tmp_path / f"off{i}.csv", [(0, 10 + i), (1000, 20 + i), (2000, 30 + i)]) for i in range(3)]
    lines, bands = [], []
    real_plot, real_fill = matplotlib.axes.Axes.plot, matplotlib.axes.Axes.fill_between

    def plot(self, *a, **k):
        lines.append((list(a[1]), k.get("label"), k.get("color")))
        return real_plot(self, *a, **k)

    def fill_between(self, *a, **k):
        bands.append((list(a[1]), list(a[2]), k.get("color")))
        return real_fill(self, *a, **k)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", plot)
    monkeypatch.setattr(matplotlib.axes.Axes, "fill_between", fill_between)
    main(["--group", "official", *csvs, "--group", "rssm", *tensorboard, "--ylabel", "return",
          "--xlabel", "agent steps", "--out", str(tmp_path / "both.png")])
    assert "agent steps" in (tmp_path / "both.svg").read_text()
    assert (tmp_path / "both.png").stat().st_size > 1000 and (tmp_path / "both.svg").is_file()
    (official, official_label, c0), (rssm, rssm_label, c1) = lines
    assert official == pytest.approx([11, 21, 31]) and official_label == "official: mean of 3 runs"
    assert rssm == pytest.approx([1.5, 5.5, 8.5]) and rssm_label == "rssm: mean of 2 runs"
    assert c0 != c1 and [b[2] for b in bands] == [c0, c1]
    low, high, _ = bands[0]
    assert 10 <= low[0] < 11 < high[0] <= 12  # resampled means of the three official runs at step 0: 10, 11, 12


def test_rssm_plot_without_runs_or_with_a_bad_csv_is_one_error_line(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("step,score\n1000,2\n")  # no column 'value'
    words = tmp_path / "words.csv"
    words.write_text("step,value\nten,2\n")
    for argv, message in (([], "no runs"), (["--group", "official"], "names no run"),
                          (["--group", "a", str(bad)], "cannot read"),
                          (["--group", "a", str(words)], "cannot read"),
                          (["--group", "a", str(bad), "--group", "a", str(bad)], "two groups have one label")):
        with pytest.raises(SystemExit) as exit_:
            main([*argv, "--out", str(tmp_path / "x.png")])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and err.startswith("rssm-plot: error:"), err
    assert not (tmp_path / "x.png").exists()

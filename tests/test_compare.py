"""iprm.analysis.compare: methods from several sweeps side by side, with the old runs' fallback scorer."""

import csv

from iprm.analysis import compare

COLUMNS = ["point", "seed", "weak/pass@1", "weak/bon@16/method", "weak/wmaj@16/method", "weak/maj@16",
           "weak/oracle@16", "weak/bon@16/reference_accumulative_last", "weak/process/method/f1",
           "weak/process/method/step_auroc", "flops/data", "flops/train"]  # fmt: skip


def _sweep(directory, rows):
    directory.mkdir()
    with (directory / "results.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=sorted({k for row in rows for k in row}))
        writer.writeheader()
        writer.writerows(rows)


def test_compare_reports_each_method_with_spread_and_shared_rows(tmp_path):
    base = {"weak/pass@1": 0.3, "weak/maj@16": 0.4, "weak/oracle@16": 0.9, "flops/data": 1.0,
            "weak/bon@16/reference_accumulative_last": 0.2}  # fmt: skip
    _sweep(tmp_path / "baselines", [
        base | {"point": "orm", "seed": s, "weak/bon@16/method": v, "weak/wmaj@16/method": 0.5,
                "weak/process/method/f1": 0.1, "weak/process/method/step_auroc": 0.6, "flops/train": 2.0}
        for s, v in enumerate([0.5, 0.7])
    ])  # fmt: skip
    _sweep(tmp_path / "objectives", [  # an old run: no `method` alias, the PRM's headline scorer instead
        base | {"point": "ce", "seed": 0, "weak/bon@16/prm_accumulative_min": 0.8,
                "weak/wmaj@16/prm_accumulative_min": 0.6, "weak/process/prm_accumulative/f1": 0.3,
                "flops/train": 3.0}
    ])  # fmt: skip
    text = compare.main([str(tmp_path / "baselines"), str(tmp_path / "objectives"), "--n", "16"])
    assert "| baselines/orm best-of-N | 2 | 0.600 ± 0.141 | 3 ± 0 |" in text
    assert "| objectives/ce best-of-N | 1 | 0.800 | 4 |" in text
    assert "| majority voting | 3 | 0.400 ± 0.000 | – |" in text
    assert "| baselines/orm | 2 | 0.100 ± 0.000 | 0.600 ± 0.000 |" in text
    assert "| objectives/ce | 1 | 0.300 | – |" in text

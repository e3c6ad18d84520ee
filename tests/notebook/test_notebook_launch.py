"""notebooks/your_own_training_code.ipynb runs clean with nbclient: a plain DDP loop, the same
with Accelerate and a tiny BERT under the `transformers` Trainer, each launched unchanged with
`px.launch` across two worker processes (issue #19's examples)."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


def test_your_own_training_code_notebook(tmp_path) -> None:
    from test_notebook_training import _run_notebook

    lines = "\n".join(_run_notebook("your_own_training_code.ipynb", tmp_path)).splitlines()

    def line(prefix: str) -> str:
        return next(t for t in lines if t.startswith(prefix))

    ddp = line("plain DDP on 2 ranks: accuracy")
    assert float(ddp.split()[-1]) >= 0.9
    assert line("reported epochs:") == "reported epochs: [0, 1, 2, 3, 4, 5]"
    accelerate = line("Accelerate on 2 processes: accuracy")
    assert float(accelerate.split()[-1]) >= 0.9
    trainer = line("Trainer on 2 ranks: eval accuracy")
    assert float(trainer.split("eval accuracy ")[1].split(",")[0]) >= 0.95

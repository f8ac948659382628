"""A writer for the kill -9 test: applies a fixed sequence of upserts and deletes to a
LocalVectorIndex, saving after every step with the step number as the generation, and
acknowledges each save in a progress file once ``save`` has returned. Restarted after each
kill, it resumes as the engine does: from the index's generation, or with a rebuild from
the "store" (the model below) when the index reports -1.

    python kill9_writer.py FOLDER PROGRESS [--background]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

DIM = 16
LABELS = 300
STEPS = 100_000  # more than any run reaches before it is killed


def step_ops(step: int) -> tuple[dict[int, np.ndarray], list[int]]:
    """What step ``step`` upserts (label -> unit vector) and deletes: the same every run."""
    rng = np.random.default_rng(step)
    labels = rng.choice(LABELS, size=12, replace=False).tolist()
    vecs = rng.standard_normal((8, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return dict(zip(labels[:8], vecs, strict=True)), labels[8:]


def model_after(step: int) -> dict[int, np.ndarray]:
    """The contents the index must hold once steps 1..``step`` are applied."""
    model: dict[int, np.ndarray] = {}
    for s in range(1, step + 1):
        ups, dels = step_ops(s)
        model.update(ups)
        for label in dels:
            model.pop(label, None)
    return model


def last_ack(progress: Path) -> int:
    lines = progress.read_text().split() if progress.exists() else []
    return int(lines[-1]) if lines else 0


def main(folder: Path, progress: Path, background: bool) -> None:
    from semsearch.adapters.vectors import local

    if background:  # compactions on the background thread, as at 50k+ vectors
        local.BACKGROUND_MIN = 0
    index = local.LocalVectorIndex(folder, DIM, ann_threshold=0, compact_changes=40,
                                   compact_dead=0.2, compact_dead_min=20)
    done = index.generation
    if done < 0:  # untrusted: rebuild from the store, as the engine does
        done = last_ack(progress)
        model = model_after(done)
        index.clear()
        if model:
            index.add(list(model), np.stack(list(model.values())))
        index.save(done)
    with progress.open("a") as out:
        out.write(f"{done}\n")
        out.flush()
        for step in range(done + 1, STEPS):
            ups, dels = step_ops(step)
            index.add(list(ups), np.stack(list(ups.values())))
            index.remove(dels)
            index.save(step)
            out.write(f"{step}\n")
            out.flush()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), "--background" in sys.argv[3:])

"""joblib.Parallel with memmapped arguments and results, on one backend, for
test_joblib_parallel.py.

    python joblib_app.py BACKEND SEED [--task-loads PATH | --model PATH]

The array (300,000 floats, 2.4 MB) is over joblib's max_nbytes (1 MB), so the
parent dumps it to a file in its temporary folder and each task's message names
it: the workers map it with load_temporary_memmap. `every_other` returns a view of
that memmap, which joblib sends back as a copy. With
`--task-loads PATH`, a task then calls load_temporary_memmap on PATH itself. With
`--model PATH`, the app maps a joblib file (`mmap_mode="r"`) and passes the mapped
array to the workers, which map the same file by its name.
"""

import sys

import numpy as np
from joblib import Parallel, delayed


def total(array):
    # Mapped in place from the parent's file, not a copy of it.
    mapped = isinstance(array, np.memmap) and "joblib_memmapping_folder" in array.filename
    return float(array.sum()), mapped


def total_mapped(array):
    return float(array.sum()), isinstance(array, np.memmap)


def every_other(array):
    return array[::2]


def task_loads(path):
    from joblib.numpy_pickle import load_temporary_memmap

    return load_temporary_memmap(path, "r", False)


def main() -> None:
    backend, seed = sys.argv[1], int(sys.argv[2])
    data = np.random.RandomState(seed).rand(300_000)
    with Parallel(n_jobs=2, backend=backend) as parallel:
        sums = parallel(delayed(total)(data) for _ in range(4))
        halves = parallel(delayed(every_other)(data) for _ in range(2))
    print("sums", sums == [(float(data.sum()), True)] * 4)
    # joblib sends a view of its own memmap back as a copy.
    print("halves", all(np.array_equal(h, data[::2]) for h in halves), type(halves[0]).__name__)
    if sys.argv[3:4] == ["--model"]:
        import joblib

        model = joblib.load(sys.argv[4], mmap_mode="r")
        results = Parallel(n_jobs=2, backend=backend)(
            delayed(total_mapped)(model) for _ in range(2)
        )
        print("model", results == [(float(np.asarray(model).sum()), True)] * 2)
    if sys.argv[3:4] == ["--task-loads"]:
        try:
            Parallel(n_jobs=2, backend=backend)(delayed(task_loads)(sys.argv[4]) for _ in range(1))
            print("task load: loaded")
        except Exception as e:
            print("task load: refused", type(e).__name__, getattr(e, "code", ""))


if __name__ == "__main__":
    main()

# Makes tests/data/numpy_shuffle.json: NumPy's legacy shuffle (np.random.seed(seed);
# np.random.shuffle(x)), the one the study split its objects with, for a few seeds and
# sizes. mvc's own shuffle (src/numpy_random.rs) must give the same permutations.
#
#   /usr/bin/python3 tests/data/make_numpy_shuffle.py    # Debian's python3-numpy (1.24)
import json

import numpy as np

cases = []
for seed in [0, 1, 42, 4294967295]:
    for n in [1, 2, 3, 10, 100, 2050]:
        np.random.seed(seed)
        x = list(range(n))
        np.random.shuffle(x)
        cases.append({"seed": seed, "n": n, "permutation": x})
# A list and an array of strings (the study's uids) shuffle alike.
np.random.seed(42)
a = np.array(["u%04d" % i for i in range(50)])
np.random.shuffle(a)
np.random.seed(42)
b = ["u%04d" % i for i in range(50)]
np.random.shuffle(b)
assert list(a) == b
out = {"numpy": np.__version__, "made_by": "tests/data/make_numpy_shuffle.py", "cases": cases}
with open("tests/data/numpy_shuffle.json", "w") as f:
    json.dump(out, f, separators=(",", ":"))

"""Installs the morph_net package (MorphNet for TensorFlow 2 / Keras 3)."""

import os

import setuptools

_HERE = os.path.dirname(os.path.abspath(__file__))


def _version():
  with open(os.path.join(_HERE, "morph_net", "__init__.py")) as f:
    for line in f:
      if line.startswith("__version__"):
        return line.split("=")[1].strip().strip('"')
  raise RuntimeError("morph_net/__init__.py defines no __version__.")


setuptools.setup(
    name="morph_net",
    version=_version(),
    description=(
        "MorphNet for TensorFlow 2 / Keras 3: learn layer widths under a FLOP,"
        " model-size or latency budget."
    ),
    long_description=open(os.path.join(_HERE, "README.md")).read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["morph_net", "morph_net.*"]),
    python_requires=">=3.9",
    # As TensorFlow add-ons do, no TensorFlow distribution is required here:
    # `tensorflow`, `tensorflow-cpu` and `tensorflow[and-cuda]` all install the
    # same `tensorflow` package, and requiring one next to another would install
    # both. `import morph_net` checks that TensorFlow >= 2.16 and Keras 3 are
    # importable and names the command below otherwise. Choose with an extra:
    install_requires=[
        "keras>=3.0",
        "numpy",
        "absl-py",
    ],
    extras_require={
        "cpu": ["tensorflow-cpu>=2.16"],
        "gpu": ["tensorflow[and-cuda]>=2.16"],
        # `morphnet demo`: scikit-learn ships the digits data, matplotlib draws the plots.
        "demo": ["scikit-learn", "matplotlib"],
        "test": ["pytest", "hypothesis", "ruff", "scikit-learn", "matplotlib", "tf_slim",
                 "tensorboard"],  # keras.callbacks.TensorBoard in the workflow tests
        # keras-hub's model coverage (slow tests). keras-hub needs tensorflow-text,
        # which requires the full `tensorflow` wheel: not to be combined with [cpu]
        # (pip would install tensorflow next to tensorflow-cpu); see README.
        "hub": ["keras-hub", "tensorflow>=2.16"],
        "slim": ["tf_slim"],  # arg_scope for ConfigurableOps and the test stubs
    },
    entry_points={"console_scripts": ["morphnet = morph_net.cli.main:main"]},
    license="Apache 2.0",
)

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
    install_requires=[
        # Either the full or the CPU wheel satisfies the import; we name the CPU
        # wheel only when the full one is absent (see README).
        "tensorflow-cpu>=2.16" if os.environ.get("MORPH_NET_TF", "cpu") == "cpu"
        else "tensorflow>=2.16",
        "numpy",
        "absl-py",
    ],
    extras_require={
        # `morphnet demo`: scikit-learn ships the digits data, matplotlib draws the plots.
        "demo": ["scikit-learn", "matplotlib"],
        "test": ["pytest", "hypothesis", "ruff", "scikit-learn", "matplotlib", "keras-hub"],
    },
    entry_points={"console_scripts": ["morphnet = morph_net.cli.main:main"]},
    license="Apache 2.0",
)

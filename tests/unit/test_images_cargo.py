"""Where the static builds of the container images go."""

from __future__ import annotations

from pathlib import Path

import pytest

from images import cargo


def test_each_checkout_has_its_own_static_target_dir(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cargo, "REPO_ROOT", tmp_path / "work" / "main")
    mine = cargo.checkout_dir(tmp_path / "cargo-static")
    assert mine.parent == tmp_path / "cargo-static"
    assert mine.name.startswith("checkout-") and len(mine.name) == len("checkout-") + 12
    assert cargo.checkout_dir(tmp_path / "cargo-static") == mine  # the same tree: warm again
    monkeypatch.setattr(cargo, "REPO_ROOT", tmp_path / "ci-fresh")
    assert cargo.checkout_dir(tmp_path / "cargo-static") != mine

"""`arlkit inspect` rendered by headless Chromium: the DOM after the page's script ran holds every role and
the branch tree, shading colours tokens (entropy on a scale per episode), a filter that matches nothing says
so, and the screenshot is kept as a test artifact.

Chromium comes from Debian (`apt-get install chromium`): `.ci/run` installs it before `make test`, and this
module installs it itself when it is missing and it runs as root with apt-get; otherwise it skips, saying
why. The screenshot is written to `$ARLKIT_TEST_ARTIFACTS` (default `test-artifacts/` in the repository) and
into the run folder as `inspect.png`; the test prints its path.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from viewer_run import write_viewer_run

from arlkit.trajectory import Role

REPO = Path(__file__).resolve().parents[1]
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WIDTH, HEIGHT = 1400, 2400


def _apt_install() -> str | None:
    """Install Debian's chromium; returns why it could not, or None."""
    if not shutil.which("apt-get") or os.geteuid() != 0:
        return "chromium is not installed and apt-get cannot install it here (needs root and apt-get)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "-o", "DPkg::Lock::Timeout=300", "chromium"]
    for cmd in (install, ["apt-get", "update", "-q"], install):  # update only if the first try fails
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if cmd is install and proc.returncode == 0:
            return None
    return f"apt-get install chromium failed: {proc.stderr.strip()[-500:]}"


@pytest.fixture(scope="session")
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    why = _apt_install()
    found = shutil.which("chromium")
    if why or not found:
        pytest.skip(why or "apt-get installed chromium but it is not on PATH")
    return found


def render(chromium: str, url: str, profile: Path, screenshot: Path | None = None) -> str:
    """The DOM after load (scripts run), and optionally a PNG of the first WIDTH × HEIGHT pixels."""
    cmd = [chromium, *FLAGS, f"--user-data-dir={profile}", f"--window-size={WIDTH},{HEIGHT}"]
    if screenshot is not None:
        cmd.append(f"--screenshot={screenshot}")
    proc = subprocess.run([*cmd, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_inspect_page_in_headless_chromium(chromium, tiny, tmp_path) -> None:
    run = write_viewer_run(tiny, tmp_path / "run")
    proc = subprocess.run(
        [sys.executable, "-m", "arlkit", "inspect", str(run)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    page = run / "inspect.html"
    shot = run / "inspect.png"
    dom = render(chromium, page.as_uri(), tmp_path / "profile", shot)

    # the script ran: it counted the cards; every role is on the page; the tree has its nodes and links
    assert "12 of 12 trajectories" in dom
    for role in Role:
        assert len(re.findall(rf'class="tok role-{role.name}[ "]', dom)) > 1, role.name
    tree = dom[dom.index('class="trees"') : dom.index('class="cards"')]
    assert tree.count('class="tree-node"') == 9 and tree.count('class="tree-node missing"') == 1
    assert 'href="#samples-s1-i7"' in tree and "@ token" in tree
    assert "(not in the samples)" in tree
    assert 'class="branch-mark"' in dom
    assert "<script>alert" not in dom  # the hostile tool output stayed text

    # shading by advantage: the script colours tokens green (+) and red (−) from data-a
    shaded = render(chromium, page.as_uri() + "?shade=advantage", tmp_path / "profile")
    assert re.search(r'data-a="[0-9.e-]+"[^>]*style="background-color: rgba\(0, 150, 70', shaded)
    assert re.search(r'data-a="-[0-9.e-]+"[^>]*style="background-color: rgba\(210, 30, 30', shaded)

    # shading by entropy: a scale per episode, so every sampled episode's most uncertain token is at full strength
    entropy = render(chromium, page.as_uri() + "?shade=entropy", tmp_path / "profile")
    cards = [c for c in entropy.split('<section class="traj"')[1:] if "data-e=" in c]
    assert len(cards) == 4 and all("rgba(235, 120, 0, 0.85)" in c for c in cards)

    # a filter that matches nothing says so instead of leaving a blank page
    empty = render(chromium, page.as_uri() + "?q=no-such-text&outcome=correct", tmp_path / "profile")
    assert "0 of 12 trajectories" in empty
    assert (
        "No episode matches text \u201cno-such-text\u201d, EM = 1. Clear the filter to see all 12." in empty
    )

    # the screenshot: the page's size, with the role colours of the legend and tokens visible
    image = Image.open(shot).convert("RGB")
    assert image.size == (WIDTH, HEIGHT)
    colours = {c for _, c in image.getcolors(WIDTH * HEIGHT)}
    for hex_colour in ("dbe9ff", "ffe2b8", "d9f2df", "eddcff", "eceff4"):  # REASONING … PROMPT in page.css
        assert tuple(int(hex_colour[i : i + 2], 16) for i in (0, 2, 4)) in colours, hex_colour
    artifacts = Path(os.environ.get("ARLKIT_TEST_ARTIFACTS", REPO / "test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, artifacts / "inspect.png")
    shutil.copy(page, artifacts / "inspect.html")
    print(f"\nscreenshot: {artifacts / 'inspect.png'} (and {shot})")

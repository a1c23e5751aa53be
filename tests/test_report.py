"""`hlb report DIR`: one self-contained HTML page per train, bench and ablate folder (fixed and
--until-resolved), opened in a real headless Chromium: it loads without a console error or a
request, its images decode, its tables show summary.json's and bench.json's numbers, and its
links reach the records from wherever the folder moves. The errors for a folder without results.

The browser part needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them)
and selenium (the ``test`` extra); without them it skips. ``HLB_TEST_SCREENSHOTS=DIR`` also
copies each page's screenshot there."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from urllib.parse import unquote

import pytest

from conftest import set_args, tiny_sets
from hlbcli.cli import main
from hlbcli.experiments import sequential
from hlbcli.output import pct, pts, runs_saved_line

CHROMIUM, DRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver") or "/usr/bin/chromedriver"
FAST = tiny_sets("data.synthetic_train=128", "data.synthetic_test=64")
KINDS = ["train", "bench", "ablate", "until_resolved"]


def _hlb(*args) -> None:
    code = main([str(a) for a in args])
    assert code == 0, f"hlb {' '.join(map(str, args))} exited {code}"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """One folder of each kind, made by the real commands on the smoke preset."""
    root = tmp_path_factory.mktemp("results")
    fast = set_args(FAST)
    _hlb("train", "--preset", "smoke", *fast, "--runs", "2", "--out", root / "train", "--quiet")
    _hlb("bench", "--preset", "smoke", *fast, "--runs", "3", "--target", "0.05", "--out", root / "bench")
    _hlb("ablate", "--preset", "smoke", *fast, "--disable", "ema", "--runs", "2", "--workers", "2", "--quiet",
         "--out", root / "ablate")
    _hlb("ablate", "--preset", "smoke", *fast, "--disable", "tta", "--runs", "2", "--until-resolved", "--max-runs", "4",
         "--workers", "2", "--quiet", "--out", root / "until_resolved")
    return root


def _report(cli, folder: Path, *more) -> Path:
    code, out, err = cli("report", folder, *more)
    assert code == 0, err
    page = Path(out.strip())
    assert page.is_file() and page.suffix == ".html"
    return page


# --- the browser -------------------------------------------------------------------------------


def _have_browser() -> str | None:
    if not (os.access(CHROMIUM, os.X_OK) and os.access(DRIVER, os.X_OK)):
        return f"needs Chromium and chromedriver ({CHROMIUM}, {DRIVER}): apt-get install chromium chromium-driver"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "needs selenium: pip install -e '.[test]'"
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    why = _have_browser()
    if why:
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,900",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
    driver.set_page_load_timeout(60)
    driver.get("about:blank")  # let a fresh profile's start-up pages settle before any report
    yield driver
    driver.quit()


def _open(driver, page: Path, shot: Path) -> dict:
    """Load the page; return its console messages, the URLs it requested, its tables (by id:
    rows of cell texts) and its images; write a full-page screenshot to ``shot``."""
    driver.get_log("browser"), driver.get_log("performance")  # drop what an earlier page left
    driver.get(page.as_uri())
    assert driver.execute_script("return document.readyState") == "complete"
    tables = driver.execute_script(
        "const t = {}; for (const e of document.querySelectorAll('table[id]')) "
        "t[e.id] = [...e.rows].map(r => [...r.cells].map(c => c.textContent)); return t;")
    images = driver.execute_script("return [...document.images].map(i => [i.id, i.complete, i.naturalWidth])")
    hrefs = driver.execute_script("return [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href'))")
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(max(900, height + 120), 12000))
    driver.save_screenshot(str(shot))
    driver.set_window_size(1280, 900)
    requests = []
    for e in driver.get_log("performance"):
        msg = json.loads(e["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            requests.append(msg["params"]["request"]["url"])
    copy = os.environ.get("HLB_TEST_SCREENSHOTS")
    if copy:
        shutil.copy(shot, Path(copy) / f"report-{shot.stem}.png")
    return {"console": driver.get_log("browser"), "requests": requests, "tables": tables, "images": images, "hrefs": hrefs}


def _expected_rows(s: dict) -> list[list[str]]:
    """The summary table's cells from summary.json, formatted as the page says: accuracies in %,
    spreads and differences in points, seconds with 2 decimals, p with 3 significant digits (a
    star below the significance level, but beside a sequential verdict, which decides)."""
    def p(v):
        return "-" if v is None else f"{v:.3g}" + (" *" if v < s["significance"] and not s.get("sequential") else "")

    def sec(v, signed=False):
        return "-" if v is None else format(v, "+.2f" if signed else ".2f")

    if "arms" not in s:
        lo, hi = s["ci95"]
        return [[str(s["n"]), pct(s["mean_accuracy"]), pts(s["std_accuracy"]), f"[{pts(lo)}, {pts(hi)}]",
                 pct(s["min_accuracy"]), pct(s["max_accuracy"]), sec(s["mean_train_seconds"]), sec(s["median_train_seconds"])]]
    rows = []
    for a in s["arms"]:
        lo, hi = a["ci95"]
        row = [a["name"], str(a["n"]), pct(a["mean_accuracy"]), pts(a["std_accuracy"]), f"[{pts(lo)}, {pts(hi)}]",
               pts(a["delta_accuracy"], signed=True), p(a["p_value"]), p(a["p_paired"]), sec(a["mean_train_seconds"]),
               sec(a["delta_train_seconds"], signed=True)]
        if s.get("sequential"):
            v = a.get("sequential")
            row += [sequential.describe(v, s["sequential"]["delta"]), sequential.interval_text(v)] if v else ["baseline", "-"]
        rows.append(row)
    return rows


@pytest.mark.parametrize("kind", KINDS)
def test_page_opens_offline_and_shows_the_summary(kind, folders, browser, cli, tmp_path):
    folder = folders / kind
    page = _report(cli, folder)
    assert page == folder / "report.html"
    html = page.read_text(encoding="utf-8")
    assert not re.search(r"(?i)\b(https?|wss?|ftp)://", html), "a URL in the page: it must open offline"
    got = _open(browser, page, tmp_path / f"{kind}.png")
    assert [e for e in got["console"] if e["level"] in ("SEVERE", "WARNING")] == []
    # the page asks for nothing but itself and its data URIs; the browser's own pages (chrome://,
    # a fresh profile's new-tab page loading late) are not the page's requests
    assert [u for u in got["requests"] if not u.startswith(("file:", "data:", "chrome:", "chrome-untrusted:", "about:"))] == []
    # the accuracy picture decoded
    assert [(i, ok) for i, ok, w in got["images"] if i == "accuracy" and w > 100] == [("accuracy", True)]
    s = json.loads((folder / "summary.json").read_text())
    table = got["tables"]["summary"]
    body = [r[1:] for r in table[1:]] if "arms" not in s else table[1:]
    assert body == _expected_rows(s)
    assert "synthetic data: not a CIFAR-10 result" in html  # smoke trains on the synthetic set
    env = dict((r[0], r[1]) for r in got["tables"]["environment"])
    rec = json.loads(next(folder.glob("**/run-000-seed0.json")).read_text())
    assert env["device"] == rec["device"] and env["torch"] == rec["versions"]["torch"]
    assert env["hlbcli"] == rec["versions"]["hlbcli"]
    assert env["commit that trained"].startswith(rec["git_commit"]) and env["commit that trained"].endswith("(run records)")
    # every record has a link, and every link reaches its file
    records = sorted(p.relative_to(folder).as_posix() for p in folder.glob("**/run-*.json"))
    assert sorted(unquote(h) for h in got["hrefs"] if "run-" in h) == records
    assert all((page.parent / unquote(h)).is_file() for h in got["hrefs"])
    assert html.count("<svg") == 2 and html.count("<polyline") >= 2  # the curves: accuracy and loss
    if kind == "bench":
        b = json.loads((folder / "bench.json").read_text())
        claim = dict((r[0], r[1]) for r in got["tables"]["claim"])
        assert claim["target"] == "5%" and claim["p, one-sided"].startswith(f"{b['p_value']:.2g} ")
        assert claim["runs needed for p < 0.01"] == str(b["runs_needed"]) and claim["claim line"] == b["summary_line"]
        assert env["commit that trained"].startswith(b["git_commit"])
    if kind in ("ablate", "until_resolved"):
        configs = {r[0]: r[1:] for r in got["tables"]["configs"][1:]}
        off = "ema" if kind == "ablate" else "tta"
        assert f'"{off}"' in configs["tricks"][0] and f'"{off}"' not in configs["tricks"][1]
        # what the arm does, in words: the trick it removes, and nothing else
        assert got["tables"]["changes"][1:] == [[f"-{off}", "-", off, "-"]]
    if kind == "until_resolved":
        seq = s["sequential"]
        arm = s["arms"][1]
        rows = got["tables"]["sequential"][1:]
        assert rows == [[arm["name"], sequential.describe(arm["sequential"], seq["delta"]),
                         "yes" if arm["sequential"]["how"] in ("effect +", "effect -", "no effect") else "no",
                         str(arm["n_started"]), str(arm["sequential"]["pairs"]), sequential.interval_text(arm["sequential"])]]
        assert runs_saved_line(seq) in html


def test_links_still_work_when_the_folder_moves_and_out_chooses_the_file(folders, cli, tmp_path):
    moved = tmp_path / "elsewhere" / "train"
    shutil.copytree(folders / "train", moved)
    page = _report(cli, moved)
    hrefs = re.findall(r'href="([^"]+)"', page.read_text())
    assert any("run-000-seed0.json" in h for h in hrefs) and all(not h.startswith("/") for h in hrefs if h != "data:,")
    shutil.move(str(moved), str(tmp_path / "again"))
    page = tmp_path / "again" / "report.html"
    assert all((page.parent / unquote(h)).is_file() for h in hrefs if h != "data:,")
    # --out FILE: the links are relative to where the page is
    (tmp_path / "pages").mkdir()
    other = _report(cli, tmp_path / "again", "--out", tmp_path / "pages" / "r.html")
    assert other == tmp_path / "pages" / "r.html"
    hrefs = [h for h in re.findall(r'href="([^"]+)"', other.read_text()) if h != "data:,"]
    assert hrefs and all(h.startswith("../again/") and (other.parent / unquote(h)).is_file() for h in hrefs)


def test_strings_from_the_folder_are_escaped(folders, cli, tmp_path, browser):
    folder = tmp_path / "train"
    shutil.copytree(folders / "train", folder)
    s = json.loads((folder / "summary.json").read_text())
    evil = '<script>document.title="owned"</script><b>cpu</b> & "x"'
    for r in s["runs"]:
        r["device"] = evil
    (folder / "summary.json").write_text(json.dumps(s))
    page = _report(cli, folder)
    assert "<script>" not in page.read_text() and "&lt;script&gt;" in page.read_text()
    got = _open(browser, page, tmp_path / "escaped.png")
    assert dict((r[0], r[1]) for r in got["tables"]["environment"])["device"] == evil
    assert "owned" not in browser.title and not [e for e in got["console"] if e["level"] == "SEVERE"]


# --- folders that are not results --------------------------------------------------------------


def test_a_folder_without_results_is_one_line_naming_the_fix(cli, tmp_path, folders):
    code, out, err = cli("report", tmp_path)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert f"{tmp_path} holds no hlb results" in err and f"hlb train --out {tmp_path}" in err
    code, _, err = cli("report", tmp_path / "nowhere")
    assert code == 2 and "is not a folder" in err
    half = tmp_path / "half"
    shutil.copytree(folders / "train", half)
    for name in ("summary.json", "report.html"):
        (half / name).unlink(missing_ok=True)
    code, _, err = cli("report", half)
    assert code == 2 and f"{half} has run records but no summary.json" in err and f"hlb summary {half}" in err
    (half / "summary.json").write_text("[1, 2]")
    code, _, err = cli("report", half)
    assert code == 2 and "summary.json: not a summary" in err and "hlb summary" in err
    s = {**json.loads((folders / "train" / "summary.json").read_text()), "mean_accuracy": "high"}
    (half / "summary.json").write_text(json.dumps(s))
    code, _, err = cli("report", half)
    assert code == 2 and "summary.json: mean_accuracy 'high' is not a number" in err
    arms = tmp_path / "arms-only"
    shutil.copytree(folders / "ablate", arms)
    (arms / "ablation.json").unlink()
    (arms / "report.html").unlink(missing_ok=True)
    code, _, err = cli("report", arms)
    assert code == 2 and "has no ablation.json, but its arms/ holds run records" in err
    assert not (arms / "report.html").exists() and not (half / "report.html").exists()


@pytest.mark.parametrize("content, why", [
    ('{"foo": 1}', "not a hlb bench claim (no n)"),
    ("[1, 2]", "not a hlb bench claim (not a JSON object)"),
    ("{", "not valid JSON"),
])
def test_a_bench_json_that_is_not_a_claim_is_one_line_naming_the_command(cli, tmp_path, folders, content, why):
    folder = tmp_path / "bench"
    shutil.copytree(folders / "bench", folder)
    (folder / "report.html").unlink(missing_ok=True)
    (folder / "bench.json").write_text(content)
    code, out, err = cli("report", folder)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: {folder / 'bench.json'}: {why}")
    assert err.rstrip().endswith("(rerun the hlb bench command with --resume to write it again)")
    assert not (folder / "report.html").exists()
    (folder / "bench.json").write_text(json.dumps({**json.loads((folders / "bench" / "bench.json").read_text()), "p_value": "low"}))
    code, _, err = cli("report", folder)
    assert code == 2 and "bench.json: p_value 'low' is not a number" in err

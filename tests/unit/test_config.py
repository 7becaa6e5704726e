"""argv parsing: nydusd's flags, Kata's exact command lines, tolerated virtiofsd args."""

from __future__ import annotations

from pathlib import Path

import pytest

from vhostfs.config import DEFAULT_RLIMIT_NOFILE, DaemonConfig, log_file_name, parse_args
from vhostfs.virtiofs import DEFAULT_WORKERS

SID = "0123456789abcdef"


def nydusd(*argv: str) -> DaemonConfig:
    return parse_args(argv, prog="vhostfs-nydusd", nydusd=True)


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str, nydusd: bool = True) -> str:
    with pytest.raises(SystemExit) as info:
        parse_args(argv, nydusd=nydusd)
    assert info.value.code == 2
    return capsys.readouterr().err


def test_kata_go_runtime_argv() -> None:
    # nydusd.go: virtiofs --log-level <lvl> --apisock <api> --sock <vhost> + extra args
    config = nydusd("virtiofs", "--log-level", "debug",
                    "--apisock", f"/run/vc/vm/{SID}/nydusd-api.sock",
                    "--sock", f"/run/vc/vm/{SID}/vhost-fs.sock")
    assert config.sock == f"/run/vc/vm/{SID}/vhost-fs.sock"
    assert config.apisock == f"/run/vc/vm/{SID}/nydusd-api.sock"
    assert config.log_level == "debug"
    assert config.hybrid_mode is True
    assert config.warnings == ()
    assert config.shared_dir is None and config.bootstrap is None


def test_kata_runtime_rs_argv() -> None:
    config = nydusd("virtiofs", "--hybrid-mode", "--log-level", "info",
                    "--apisock", f"/run/kata/{SID}/root/nydusd-api.sock",
                    "--sock", f"/run/kata/{SID}/root/virtiofsd.sock")
    assert config.hybrid_mode is False  # nydusd's inverted flag
    assert config.apisock == f"/run/kata/{SID}/root/nydusd-api.sock"
    assert any("--hybrid-mode" in w for w in config.warnings)


def test_kata_go_default_extra_args_are_tolerated() -> None:
    config = nydusd("virtiofs", "--log-level", "info", "--apisock", "a", "--sock", "s",
                    "--thread-pool-size=1", "--announce-submounts")
    assert config.workers == DEFAULT_WORKERS  # virtiofsd's thread count is not ours
    assert any("--thread-pool-size=1" in w for w in config.warnings)
    assert any("--announce-submounts" in w for w in config.warnings)


def test_kata_runtime_rs_default_extra_args_are_tolerated() -> None:
    config = nydusd("virtiofs", "--hybrid-mode", "--log-level", "info", "--apisock", "a",
                    "--sock", "s", "--thread-pool-size=1", "-o", "announce_submounts")
    assert any("-o announce_submounts" in w for w in config.warnings)
    assert any("--thread-pool-size=1" in w for w in config.warnings)


def test_other_virtiofsd_options_are_tolerated() -> None:
    config = nydusd("virtiofs", "--sock", "s", "-o", "cache=none", "-o", "xattr", "--xattr",
                    "--sandbox=none", "--inode-file-handles=never")
    flags = " ".join(config.warnings)
    for written in ("-o cache=none", "-o xattr", "--xattr", "--sandbox=none",
                    "--inode-file-handles=never"):
        assert written in flags


def test_thread_pool_size_is_the_worker_count_for_vhostfs() -> None:
    config = parse_args(["virtiofs", "--sock", "s", "--thread-pool-size", "4"])
    assert config.workers == 4
    assert config.warnings == ()
    assert parse_args(["virtiofs", "--sock", "s", "--workers", "3"]).workers == 3
    assert nydusd("virtiofs", "--sock", "s", "--workers", "3").workers == 3


def test_poll_us_is_the_queue_polling_limit() -> None:
    assert parse_args(["virtiofs", "--sock", "s"]).poll_us == 100
    assert parse_args(["virtiofs", "--sock", "s", "--poll-us", "0"]).poll_us == 0
    assert nydusd("virtiofs", "--sock", "s", "--poll-us", "40").poll_us == 40


def test_every_nydusd_flag(tmp_path: Path) -> None:
    config = nydusd(
        "virtiofs", "--sock", "s", "-A", "api", "-C", "cfg.json", "-B", "boot",
        "--prefetch-files", "list", "-m", "/img", "-l", "trace", "-L", str(tmp_path / "x"),
        "--log-rotation-size", "7", "--rlimit-nofile", "4096", "--id", "i",
        "--supervisor", "sup", "--upgrade", "--dedup-db", "db")
    assert (config.apisock, config.config, config.bootstrap) == ("api", "cfg.json", "boot")
    assert config.prefetch_files == "list"
    assert config.virtual_mountpoint == "/img"
    assert config.log_level == "trace"
    assert config.log_file == str(tmp_path / "x.log")
    assert config.log_rotation_size == 7
    assert config.rlimit_nofile == 4096
    assert (config.id, config.supervisor) == ("i", "sup")
    assert any("--upgrade" in w for w in config.warnings)
    assert any("--dedup-db" in w for w in config.warnings)


def test_short_flags_and_defaults() -> None:
    config = nydusd("virtiofs", "--sock", "s", "-s", "/srv", "-D", "/blobs")
    assert config.shared_dir == "/srv"
    assert config.localfs_dir == "/blobs"
    assert config.virtual_mountpoint == "/"
    assert config.log_level == "info"
    assert config.rlimit_nofile == DEFAULT_RLIMIT_NOFILE
    assert config.writable is True  # nydusd's passthrough is writable
    assert parse_args(["virtiofs", "--sock", "s", "-s", "/srv"]).writable is False
    assert parse_args(["virtiofs", "--sock", "s", "-s", "/srv", "--writable"]).writable is True
    assert nydusd("virtiofs", "--sock", "s", "-s", "/srv", "--read-only").writable is False


def test_global_flags_before_the_subcommand() -> None:
    config = nydusd("--log-level", "warn", "--apisock", "a", "virtiofs", "--sock", "s")
    assert (config.log_level, config.apisock, config.sock) == ("warn", "a", "s")


def test_repeated_flags_last_wins() -> None:
    # Kata passes --log-level info; its docs tell users to add --log-level debug.
    config = nydusd("virtiofs", "--log-level", "info", "--sock", "s", "--log-level", "debug")
    assert config.log_level == "debug"


def test_cache_policy() -> None:
    assert parse_args(["virtiofs", "--sock", "s", "--cache", "never"]).cache == "none"
    assert parse_args(["virtiofs", "--sock", "s", "--cache=always"]).cache == "always"


@pytest.mark.parametrize("argv", [
    ["virtiofs", "--sock", "s", "--threads", "4"],  # Kata's how-to example: refused
    ["virtiofs", "--sock", "s", "--thread-num", "4"],
    ["virtiofs", "--sock", "s", "--mountpoint", "/mnt"],
    ["virtiofs", "--sock", "s", "--fscache", "/x"],
    ["virtiofs", "--sock", "s", "--bogus"],
    ["virtiofs", "--sock", "s", "--sh", "/abbreviated"],  # no abbreviations
    ["virtiofs"],  # --sock is required
    ["--sock", "s"],  # the subcommand is required
    ["fuse", "--sock", "s"],
    ["virtiofs", "--sock", "s", "--log-level", "verbose"],
    ["virtiofs", "--sock", "s", "--id", "x"],
    ["virtiofs", "--sock", "s", "--supervisor", "x"],
    ["virtiofs", "--sock", "s", "-s", "/a", "-B", "b", "-D", "d"],
    ["virtiofs", "--sock", "s", "-B", "b"],
    ["virtiofs", "--sock", "s", "-B", "b", "-C", "c", "-D", "d"],
    ["virtiofs", "--sock", "s", "--prefetch-files", "l"],
    ["virtiofs", "--sock", "s", "--rlimit-nofile", "-1"],
    ["virtiofs", "--sock", "s", "--rlimit-nofile", "many"],
    ["virtiofs", "--sock", "s", "--workers", "0"],
    ["virtiofs", "--sock", "s", "--poll-us", "-1"],
    ["virtiofs", "--sock", "s", "--poll-us", "10001"],
])
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    err = usage_error(capsys, *argv)
    assert "error:" in err
    assert "usage:" in err


def test_version_lines(capsys: pytest.CaptureFixture[str]) -> None:
    for flag in ("--version", "-V"):
        with pytest.raises(SystemExit) as info:
            parse_args([flag], nydusd=True)
        assert info.value.code == 0
        lines = capsys.readouterr().out.splitlines()
        assert [line.split(":")[0] for line in lines] == [
            "Version", "Git Commit", "Build Time", "Profile", "Rustc"]
        assert lines[0].startswith("Version: \tv")


@pytest.mark.parametrize(("given", "used"), [
    ("nydusd", "nydusd.log"), ("/var/log/nydusd", "/var/log/nydusd.log"),
    ("a.txt", "a.txt"), ("dir.d/file", "dir.d/file.log"), (".hidden", ".hidden.log")])
def test_log_file_extension(given: str, used: str) -> None:
    assert log_file_name(given) == used

"""The options that several ``hlb`` commands share."""

import typer

PresetOpt = typer.Option("94", "--preset", "-p", help="preset name (see `hlb config presets`) or a .toml path")
ConfigOpt = typer.Option(None, "--config", "-c", help="TOML file layered over the preset")
SetOpt = typer.Option(None, "--set", "-s", help="override one key: section.key=value (TOML value); repeatable")
DisableOpt = typer.Option(None, "--disable", "-d", help="turn a trick off; repeatable")
EnableOpt = typer.Option(None, "--enable", "-e", help="turn a trick on; repeatable")
DeviceOpt = typer.Option("auto", "--device", help="auto, cpu or cuda")
DataDirOpt = typer.Option(None, "--data-dir", help="dataset folder (default: $HLB_DATA_DIR, else a user cache)")
NoDownloadOpt = typer.Option(False, "--no-download", help="fail instead of downloading a missing dataset")
ResumeOpt = typer.Option(False, "--resume", help="--out holds an earlier batch of this config: keep its finished runs, train the rest")
VaryOpt = typer.Option(None, "--vary", help="KEY=VALUE: an arm with this setting changed (TOML value, as --set; "
                       "KEY=VALUE,KEY=VALUE changes several in one arm); repeatable")

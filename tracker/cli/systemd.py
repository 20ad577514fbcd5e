"""The systemd unit for a single-box install, printed by ``python run.py systemd-unit``."""

from __future__ import annotations

import os
import shlex

_UNIT = """\
# tracker: UIS <-> retailCRM connector. Install:
#   python run.py systemd-unit --config {config} | sudo tee /etc/systemd/system/tracker.service
#   sudo systemctl daemon-reload && sudo systemctl enable --now tracker
[Unit]
Description=tracker: UIS <-> retailCRM connector
Documentation=file://{workdir}/README.md
After=network-online.target
Wants=network-online.target

[Service]
Type=exec
User={user}
Group={user}
ExecStart={exec_start}
WorkingDirectory={state_dir}
StateDirectory={state_name}
StateDirectoryMode=0700
# SIGTERM drains requests and stops within a couple of seconds
KillSignal=SIGTERM
TimeoutStopSec=20
Restart=on-failure
RestartSec=2
# 2 = bad configuration, 3 = bad database or statechart: restarting cannot help
RestartPreventExitStatus=2 3
# sandbox (`systemd-analyze security tracker` scores it about 1.1): tracker needs its state
# directory, the network (UIS and retailCRM, so no IP allow list) and nothing else
Environment=PYTHONDONTWRITEBYTECODE=1
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome={protect_home}
ReadWritePaths={state_dir}
PrivateTmp=yes
PrivateDevices=yes
DevicePolicy=closed
PrivateUsers=yes
PrivateIPC=yes
PrivateMounts=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
ProcSubset=pid
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
RemoveIPC=yes
LockPersonality=yes
# CPython does not JIT, and no dependency makes ctypes/cffi callbacks
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallErrorNumber=EPERM
CapabilityBoundingSet=
AmbientCapabilities=
KeyringMode=private
UMask=0077

[Install]
WantedBy=multi-user.target
"""


def unit(*, python: str, workdir: str, config: str, user: str = "tracker",
         state_dir: str = "/var/lib/tracker") -> str:
    """The unit text: ``python -m tracker serve --config CONFIG`` as ``user``, with the
    database directory ``state_dir`` (``database.path`` should point inside it)."""
    if not state_dir.startswith("/var/lib/"):
        raise ValueError("the state directory must be under /var/lib/ (systemd StateDirectory)")
    # ProtectHome=yes hides /home, /root and /run/user: an interpreter or checkout living there
    # (a pyenv, a venv in a home) must stay readable
    homes = ("/home/", "/root/", "/run/user/")
    in_home = any(path.startswith(homes) or os.path.realpath(path).startswith(homes)
                  for path in (python, workdir, config))
    exec_start = " ".join(shlex.quote(part) for part in
                          (python, "-m", "tracker", "serve", "--config", config))
    return _UNIT.format(config=config, user=user, exec_start=exec_start, workdir=workdir,
                        state_dir=state_dir, state_name=state_dir[len("/var/lib/"):].strip("/"),
                        protect_home="read-only" if in_home else "yes")

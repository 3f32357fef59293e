"""Is the kern.log blockerd follows guarded by blocker's rsyslog drop-in?

A kern.log is only as trustworthy as the rule that decides what rsyslog writes into it. The
drop-in (packaging/rsyslog/00-blocker-kernel-only.conf, installed in /etc/rsyslog.d) drops
kern.* messages that did not come from the kernel input (imklog) and LOG-like kernel lines at
any level but the LOG rules' one. blockerd cannot see rsyslog's running rules; it checks what
rsyslog would load: rsyslog.conf includes /etc/rsyslog.d, and a file there holds the guard rule,
word for word, for the jails' log level. Anything else (no rsyslog, another syslog daemon, an
edited rule) gets a warning at start, naming the rule to install.
"""

from __future__ import annotations

import glob
import os
import re

RSYSLOG_CONF = "/etc/rsyslog.conf"
RSYSLOG_DIR = "/etc/rsyslog.d"
_INCLUDE = re.compile(
    r'^\s*(?:\$IncludeConfig\s+|include\s*\(\s*file\s*=\s*")'
    r"/etc/rsyslog\.d/\*\.conf",
    re.MULTILINE,
)


def guard_rule(level: int) -> str:
    """The drop-in's rule for LOG records at syslog `level`."""
    return (
        'if $syslogfacility-text == "kern" and ($inputname != "imklog" or '
        f'($syslogseverity != {level} and $msg contains "SRC=")) then stop'
    )


def holds_guard(text: str, level: int) -> bool:
    """True when a config file's text has the guard rule for `level` as a statement of its
    own (comments ignored, whitespace runs compared as one space)."""
    wanted = " ".join(guard_rule(level).split())
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        if " ".join(line.split()) == wanted:
            return True
    return False


def includes_dropins(main_conf: str) -> bool:
    """True when rsyslog.conf includes /etc/rsyslog.d/*.conf (legacy or RainerScript form)."""
    return _INCLUDE.search(main_conf) is not None


def unguarded_reason(
    levels: frozenset[int], conf: str = RSYSLOG_CONF, dropin_dir: str = RSYSLOG_DIR
) -> str | None:
    """Why the kern.log is not guarded on this host, or None when it is."""
    if len(levels) != 1:
        return f"jails read it at several log levels ({sorted(levels)}); one rule guards one"
    (level,) = levels
    try:
        with open(conf, encoding="utf-8", errors="replace") as handle:
            main = handle.read()
    except OSError as exc:
        return f"cannot read {conf}: {exc.strerror or exc} (is rsyslog its writer?)"
    if not includes_dropins(main):
        return f"{conf} does not include {dropin_dir}/*.conf"
    for path in sorted(glob.glob(os.path.join(dropin_dir, "*.conf"))):
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                if holds_guard(handle.read(), level):
                    return None
        except OSError:
            continue
    return f"no file in {dropin_dir} holds the rule: {guard_rule(level)}"

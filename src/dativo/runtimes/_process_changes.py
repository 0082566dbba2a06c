"""The change-reader half of :class:`dativo.runtimes.process.ProcessReader` (``docs/process-protocol.md`` 3a).

A plugin whose hello lists the ``changes`` capability answers the ``ChangeReader`` methods as
command lines; one listing ``changes_together`` also starts several tables of one slot
(``begin_changes_together``): the other tables' batches are then read from its process.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from dativo.core.registry import PluginPlan
from dativo.errors import ConfigError, PluginError
from dativo.runtimes._plugin_process import PluginProcess, Stopped
from dativo.runtimes.protocol import CHANGES, CHANGES_TOGETHER, ProtocolError, decode_line

if TYPE_CHECKING:
    from dativo.runtimes.process import ProcessReader

__all__ = ["ProcessChanges", "reply"]


def reply(proc: PluginProcess, doing: str) -> dict[str, Any]:
    """The plugin's answer line to a command; raises its failure when it ends or stalls instead."""
    idle = proc.spec.timeouts.idle_s
    what = f"did not answer within timeouts.idle_s = {idle:g} s" if idle is not None else "stalled"
    try:
        line = proc.read_line(idle, what)
    except Stopped:
        line = None
    if line is None:
        raise proc.failure(doing)
    return decode_line(line, f"{proc.label}'s answer to {doing}")


class ProcessChanges:
    """``dativo.ChangeReader`` over the process protocol; mixed into ``ProcessReader``."""

    _plan: PluginPlan
    _proc: PluginProcess | None
    _changing: bool
    _owner: tuple[ProcessReader, int] | None

    if TYPE_CHECKING:  # provided by ProcessReader, which this class is mixed into

        def _read(self, batch_size: int, schema: pa.Schema, member: int | None) -> Iterator[pa.RecordBatch]: ...

    def _capabilities(self) -> list[Any]:
        capabilities = self._proc.hello.get("capabilities") if self._proc is not None else None
        return capabilities if isinstance(capabilities, list) else []

    # -- dativo.ChangeReader, for a plugin whose hello lists the "changes" capability ------------------

    @property
    def reads_changes(self) -> bool:
        """True when the plugin's hello lists the ``changes`` capability (it is a change reader)."""
        return CHANGES in self._capabilities()

    def _ask(self, command: dict[str, Any], answer: str, doing: str) -> dict[str, Any]:
        """Send a change command and return its answer line; raises the plugin's failure or ProtocolError."""
        proc = self._proc
        if proc is None:
            raise PluginError(f"reader '{self._plan.ref.name}' is closed")
        if not self.reads_changes:
            raise ConfigError(
                f"source.cdc: {proc.label} cannot read changes (its hello does not list the 'changes' capability; "
                "see docs/process-protocol.md)"
            )
        try:
            proc.send(command, doing)
        except (BrokenPipeError, Stopped):
            raise proc.failure(doing) from None
        answered = reply(proc, doing)
        if answered.get("dativo") != answer:
            proc.kill()
            raise ProtocolError(
                f"{proc.label} answered '{command['command']}' with {str(answered)[:200]}; "
                f'expected {{"dativo": "{answer}", ...}} (see docs/process-protocol.md)'
            )
        return answered

    def change_keys(self) -> list[str]:
        """The source's key columns, as the plugin says (``change_keys``); raises its failure."""
        keys = self._ask({"command": "change_keys"}, "change_keys", "naming its key").get("keys")
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise ProtocolError(f"{self._label()} answered 'change_keys' without a list of column names")
        return keys

    def check_changes(self, keys: Sequence[str]) -> list[str]:
        """What stops change capture (``check_changes``); raises the plugin's failure."""
        reply = self._ask({"command": "check_changes", "keys": list(keys)}, "change_problems", "checking changes")
        problems = reply.get("problems")
        if not isinstance(problems, list):
            raise ProtocolError(f"{self._label()} answered 'check_changes' without a 'problems' list")
        return [str(p) for p in problems]

    def begin_changes(self, committed: Mapping[str, Any] | None, keys: Sequence[str]) -> Mapping[str, Any]:
        """Ask the plugin what this run reads after ``committed`` (``begin_changes``); raises its failure."""
        command = {"command": "begin_changes", "committed": dict(committed) if committed else None, "keys": list(keys)}
        start = self._ask(command, "started", "beginning changes").get("start")
        if not isinstance(start, dict) or not isinstance(start.get("position"), dict):
            raise ProtocolError(f"{self._label()} answered 'begin_changes' without a 'start' holding a 'position'")
        self._changing = True
        return start

    def confirm(self, position: Mapping[str, Any]) -> Mapping[str, Any]:
        """Tell the plugin ``position`` is committed (``confirm``), then let it exit; raises its failure."""
        proc = self._proc
        facts = self._ask({"command": "confirm", "position": dict(position)}, "confirmed", "confirming").get("facts")
        if not isinstance(facts, dict):
            raise ProtocolError(f"{self._label()} answered 'confirm' without a 'facts' object")
        assert proc is not None
        proc.close_stdin()
        proc.check_clean_exit("confirming")
        return facts

    def _label(self) -> str:
        return self._proc.label if self._proc is not None else f"reader plugin '{self._plan.ref.name}'"

    def begin_changes_together(
        self,
        members: Sequence[tuple[Any, Mapping[str, Any] | None, Sequence[str]]],
        held: Sequence[Mapping[str, Any]] = (),
    ) -> list[Mapping[str, Any]]:
        """Start several tables of one slot in this plugin (``begin_changes_together``); one start each.

        ``members[0]`` is this reader; the others' batches are then read from this plugin. Raises
        ConfigError when the plugin cannot start several tables or a member is no process reader.
        """
        if CHANGES_TOGETHER not in self._capabilities():
            raise ConfigError(
                f"reader '{self._plan.ref.name}' cannot read several tables from one slot (its plugin does not "
                f"announce '{CHANGES_TOGETHER}'); give each stream its own source.cdc.slot and publication"
            )
        if not members or members[0][0] is not self:
            raise ValueError("begin_changes_together: the first member must be the reader it is called on")
        others = []
        for reader, committed, keys in members[1:]:
            if not isinstance(reader, ProcessChanges) or not hasattr(reader, "config"):
                raise ConfigError(f"tables read from one slot must all use the same process reader, not {reader!r}")
            others.append({"config": dict(reader.config), "committed": _obj(committed), "keys": list(keys)})
        _, committed, keys = members[0]
        command = {
            "command": "begin_changes_together",
            "committed": _obj(committed),
            "keys": list(keys),
            "members": others,
            "held": [dict(h) for h in held],
        }
        starts = self._ask(command, "started_together", "beginning changes of several tables").get("starts")
        if not isinstance(starts, list) or len(starts) != len(members):
            raise ProtocolError(f"{self._label()} answered 'begin_changes_together' without one start per table")
        for start in starts:
            if not isinstance(start, dict) or not isinstance(start.get("position"), dict):
                raise ProtocolError(
                    f"{self._label()} answered 'begin_changes_together' with a start lacking a position"
                )
        self._changing = True
        for index, (reader, _, _) in enumerate(members[1:], start=1):
            reader._owner = (self, index)
        return starts

    def least_position(self, positions: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
        """The earliest of ``positions``, as the plugin orders them (``least_position``); raises its failure."""
        command = {"command": "least_position", "positions": [dict(p) for p in positions]}
        position = self._ask(command, "least_position", "ordering positions").get("position")
        if not isinstance(position, dict):
            raise ProtocolError(f"{self._label()} answered 'least_position' without a 'position' object")
        return position


def _obj(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return dict(value) if value else None

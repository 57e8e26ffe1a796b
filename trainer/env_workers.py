"""Subprocess vector environments with supervised restarts (rl_core.md §3, §4, §5).

:class:`SubprocVecEnv` runs every environment in its own worker process (``spawn`` or
``forkserver`` context, one ``Pipe`` each) for envs that live outside Python or crash on their own:
ViZDoom, ScienceWorld / TextWorldExpress behind py4j. It follows the project's vector-env protocol,
shared with the in-process vector env:

- ``reset() -> (obs [N, ...], infos)`` resets env ``k`` with its seed;
- ``step(actions) -> (obs [N, ...], reward float32 [N], terminated bool [N], truncated bool [N], infos)``
  sends every action first and then collects the results, so the envs step in parallel;
- **same-step autoreset** (§3) happens inside the worker: on the step an episode ends, ``obs`` is
  already the first observation of the next episode, ``info["final_obs"]`` holds the true last
  observation and ``info["episode"]`` the episode's ``return``, ``cost``, ``length`` and the env's
  ``info["episode_extras"]``. Every info carries a float ``"cost"`` (0.0 when the env gives none).

**Supervision (§4).** A failure of env ``k`` is a dead pipe (``EOFError``, ``BrokenPipeError``,
``ConnectionResetError``), a worker process that exited, a step or reset slower than its timeout, or
any exception raised by the env inside the worker (the worker reports it as type name, message and
traceback instead of dying; this covers ViZDoom's ``ViZDoomUnexpectedExitException`` /
``SignalException`` and py4j errors without importing them). On a failure the supervisor

1. kills the worker by the PID it started (never by name) and joins it;
2. starts a new worker with seed ``seeds[k] + 7919 * n``, ``n`` being env ``k``'s restart count after
   this restart;
3. resets it (a failing reset is retried the same way);
4. returns, for a failure inside ``step``, the interrupted transition as ``reward 0.0``,
   ``terminated False``, ``truncated True`` with ``info = {"cost": 0.0, "final_obs": <last good
   observation>, "restarted": True, "error": "<type>: <message>"}`` and **no** ``"episode"`` entry, so
   GAE bootstraps from the last good observation and no advantage leaks across the break;
5. increments :attr:`SubprocVecEnv.restarts` and ``restarts_per_env[k]`` and warns in one line.

More than ``max_consecutive_restarts`` consecutive failures of one env (a successful step resets the
count) raise a one-line ``RuntimeError`` naming the env index, its ``describe()`` and the last error.

**Seeding (§5).** ``env_fns[k](seed)`` builds env ``k`` inside its worker and ``env.reset(seed=seed)``
starts it; autoresets call ``env.reset()`` without a seed, so the env's own RNG continues.

**Teardown.** :meth:`SubprocVecEnv.close` asks every worker to close, joins it with a timeout and then
kills it; an ``atexit`` hook kills whatever worker is still alive when the interpreter exits. Workers
are daemonic (an env may launch programs with ``subprocess``, as ViZDoom and py4j do, but not
``multiprocessing`` children), ignore ``SIGINT`` (the trainer handles Ctrl-C and closes them), exit
when their parent's end of the pipe closes, and lead their own process group: a kill goes to the
group whose id is the worker's PID, so the programs an env launched die with it instead of piling
up over restarts.

Deviations from the protocol text: :meth:`SubprocVecEnv.reset` also accepts optional per-env seeds,
and without them resets a restarted env with its restart seed (``seeds[k] + 7919 * n``), not with
``seeds[k]``, so a replacement never replays the episodes of the env it replaced.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.util  # noqa: F401  (registered first, so our atexit hook runs before its own)
import os
import signal
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # gymnasium is imported by the env code itself; the parent only needs it for types
    import gymnasium

__all__ = ["RESTART_SEED_STRIDE", "EnvWorkerError", "SubprocVecEnv", "restart_seed"]

log = logging.getLogger(__name__)

#: The seed of env ``k`` after its ``n``-th restart is ``seeds[k] + RESTART_SEED_STRIDE * n`` (§4, step 2).
RESTART_SEED_STRIDE = 7919

_CONTEXTS = ("spawn", "forkserver")
_PIPE_ERRORS = (EOFError, BrokenPipeError, ConnectionResetError, OSError)
#: How long ``poll`` waits at a time before it checks whether the worker process is still alive.
_POLL_SLICE_S = 0.25
#: Time a killed worker gets to be reaped by ``join``.
_KILL_JOIN_S = 5.0

#: Every worker process started by this module and not yet reaped, with the PID of the process that
#: started it; the ``atexit`` hook kills them (only in that process, never in a forked copy of it).
_LIVE_WORKERS: dict[multiprocessing.process.BaseProcess, int] = {}


def restart_seed(seed: int, restart_count: int) -> int:
    """Seed of an env's replacement worker: ``seed + 7919 * restart_count`` (rl_core.md §4, step 2).

    Args:
        seed: the env's first seed (``seeds[k]``).
        restart_count: how many times the env has been restarted, counting this restart.
    """
    return int(seed) + RESTART_SEED_STRIDE * int(restart_count)


class EnvWorkerError(RuntimeError):
    """A ``render`` / ``call`` on a worker failed (the env raised, the worker died or timed out)."""


# ----------------------------------------------------------------------------------------------------
# Worker side (runs in the child process)
# ----------------------------------------------------------------------------------------------------


def _error_payload(exc: BaseException) -> tuple[str, str, str]:
    """(type name, message, traceback) of an exception, as plain strings (always picklable)."""
    return type(exc).__name__, str(exc), "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


class _EpisodeRunner:
    """One env with same-step autoreset and episode accumulators (lives in the worker)."""

    def __init__(self, env: gymnasium.Env) -> None:
        self.env = env
        self._clear()

    def _clear(self) -> None:
        self.ep_return = 0.0
        self.ep_cost = 0.0
        self.ep_length = 0

    def reset(self, seed: int | None) -> tuple[Any, dict]:
        obs, info = self.env.reset(seed=seed)
        self._clear()
        info = dict(info)
        info["cost"] = float(info.get("cost", 0.0))
        return obs, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        info = dict(info)
        reward = float(reward)
        cost = float(info.get("cost", 0.0))
        info["cost"] = cost
        self.ep_return += reward
        self.ep_cost += cost
        self.ep_length += 1
        terminated, truncated = bool(terminated), bool(truncated)
        if terminated or truncated:  # same-step autoreset (§3)
            info["final_obs"] = obs
            info["episode"] = {
                "return": self.ep_return,
                "cost": self.ep_cost,
                "length": self.ep_length,
                **dict(info.get("episode_extras", {}) or {}),
            }
            obs, _ = self.env.reset()  # no seed: the env's own RNG continues (§5)
            self._clear()
        return obs, reward, terminated, truncated, info

    def call(self, name: str, args: tuple, kwargs: dict) -> Any:
        getter = getattr(self.env, "get_wrapper_attr", None)
        target = getter(name) if callable(getter) else getattr(self.env, name)
        return target(*args, **kwargs) if callable(target) else target


def _worker_main(conn: multiprocessing.connection.Connection, env_fn: Callable[[int], Any], seed: int) -> None:
    """Entry point of a worker: build the env, answer ``(command, payload)`` messages until ``close``.

    Every reply is ``("ok", result)`` or ``("error", (type name, message, traceback))``; an exception in
    env code never kills the worker.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    try:  # its own process group, so a kill also reaches what the env launched (a ViZDoom or JVM process)
        os.setpgid(0, 0)
    except OSError:
        pass
    try:
        import torch

        torch.set_num_threads(1)
    except Exception:  # torch is optional in a worker
        pass
    runner = None
    try:
        try:
            env = env_fn(seed)
            runner = _EpisodeRunner(env)
            conn.send(("ok", (env.observation_space, env.action_space)))
        except Exception as exc:
            conn.send(("error", _error_payload(exc)))
            return
        while True:
            try:
                command, payload = conn.recv()
            except _PIPE_ERRORS:  # the parent is gone
                break
            if command == "close":
                break
            try:
                if command == "step":
                    result = runner.step(payload)
                elif command == "reset":
                    result = runner.reset(payload)
                elif command == "call":
                    result = runner.call(*payload)
                else:
                    raise ValueError(f"unknown worker command {command!r}")
                message = ("ok", result)
            except Exception as exc:
                message = ("error", _error_payload(exc))
            try:
                conn.send(message)
            except _PIPE_ERRORS:
                break
            except Exception as exc:  # the result did not pickle: nothing was written, report that instead
                conn.send(("error", _error_payload(exc)))
    except _PIPE_ERRORS:
        pass
    finally:
        if runner is not None:
            try:
                runner.env.close()
            except Exception:
                pass
        try:
            conn.close()
        except OSError:
            pass


# ----------------------------------------------------------------------------------------------------
# Parent side
# ----------------------------------------------------------------------------------------------------


class _WorkerFailure(Exception):
    """A failed exchange with a worker; ``reason`` is ``"<type>: <message>"``; ``remote`` says whether the
    env raised (the pipe is still in sync) rather than the worker dying or timing out."""

    def __init__(self, reason: str, tb: str = "", remote: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.tb = tb
        self.remote = remote


class _Worker:
    """The parent's handle on one worker: its process, its end of the pipe and the seed it was built with."""

    __slots__ = ("conn", "process", "seed")

    def __init__(self, process: multiprocessing.process.BaseProcess, conn: Any, seed: int) -> None:
        self.process = process
        self.conn = conn
        self.seed = seed

    def send(self, command: str, payload: Any) -> None:
        try:
            self.conn.send((command, payload))
        except _PIPE_ERRORS as exc:
            raise _WorkerFailure(f"{type(exc).__name__}: pipe to worker pid {self.process.pid} is closed "
                                 f"(exit code {self.process.exitcode})") from None

    def recv(self, deadline: float, what: str, timeout_s: float) -> Any:
        """Wait until ``deadline`` (``time.monotonic``) for the reply to ``what``."""
        while True:
            remaining = deadline - time.monotonic()
            try:
                ready = self.conn.poll(max(0.0, min(remaining, _POLL_SLICE_S)))
            except _PIPE_ERRORS as exc:
                raise _WorkerFailure(f"{type(exc).__name__}: pipe to worker pid {self.process.pid} is broken") from None
            if ready:
                break
            if not self.process.is_alive():
                raise _WorkerFailure(f"WorkerExited: worker pid {self.process.pid} exited with code "
                                     f"{self.process.exitcode} during {what}")
            if remaining <= 0:
                raise _WorkerFailure(f"TimeoutError: {what} took longer than {timeout_s:g} s")
        try:
            status, payload = self.conn.recv()
        except _PIPE_ERRORS as exc:
            self.process.join(0.1)
            raise _WorkerFailure(f"{type(exc).__name__}: worker pid {self.process.pid} closed its pipe during "
                                 f"{what} (exit code {self.process.exitcode})") from None
        if status == "error":
            type_name, message, tb = payload
            raise _WorkerFailure(f"{type_name}: {message}", tb, remote=True)
        return payload

    def kill(self) -> None:
        """SIGKILL the process this handle started (by its PID, never by name) and the process group it
        leads (what its env launched), join it, close the pipe."""
        _kill_process(self.process)
        self.process.join(_KILL_JOIN_S)
        if self.process.exitcode is not None:
            _LIVE_WORKERS.pop(self.process, None)
        try:
            self.conn.close()
        except OSError:
            pass


def _kill_process(process: multiprocessing.process.BaseProcess) -> None:
    """SIGKILL a worker by the PID it was started with, and the process group it made itself leader of."""
    pid = process.pid
    if pid is None:
        return
    try:
        os.killpg(pid, signal.SIGKILL)  # the group whose id is the worker's PID: the worker and its children
    except OSError:  # no such group (the worker had not called setpgid yet, or everyone in it is gone)
        pass
    try:
        process.kill()
    except (OSError, ValueError):
        pass


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _describe(env_fn: Any) -> str:
    describe = getattr(env_fn, "describe", None)
    if callable(describe):
        try:
            return _one_line(describe())
        except Exception:
            pass
    return _one_line(repr(env_fn))


class SubprocVecEnv:
    """Vectorized envs, one subprocess each, with same-step autoreset and supervised restarts.

    Args:
        env_fns: one picklable callable per env; ``env_fns[k](seed)`` builds env ``k`` inside its worker.
            A ``describe()`` method, if present, names the env in warnings and errors (else ``repr``).
        seeds: ``seeds[k]`` is env ``k``'s first seed (rl_core.md §5: ``seed + 10_000 * rank + k``).
        step_timeout_s: a step (or ``render`` / ``call``) slower than this is a failure (default 60 s, §4).
        reset_timeout_s: building a worker's env, and a reset, slower than this is a failure (default 120 s).
        max_consecutive_restarts: more consecutive failures than this of one env raise ``RuntimeError``
            (default 5, §4).
        context: multiprocessing start method, ``"spawn"`` (default) or ``"forkserver"``.

    Attributes:
        num_envs: the number of envs.
        single_observation_space: the observation space of one env (from worker 0).
        single_action_space: the action space of one env (from worker 0).
        restarts: restarts so far, all envs together (logged as ``env/restarts``).
        restarts_per_env: restarts so far of each env.
    """

    def __init__(
        self,
        env_fns: Sequence[Callable[[int], gymnasium.Env]],
        seeds: Sequence[int],
        step_timeout_s: float = 60.0,
        reset_timeout_s: float = 120.0,
        max_consecutive_restarts: int = 5,
        context: str = "spawn",
    ) -> None:
        env_fns = list(env_fns)
        seeds = [int(s) for s in seeds]
        if not env_fns:
            raise ValueError("SubprocVecEnv: env_fns is empty")
        if len(seeds) != len(env_fns):
            raise ValueError(f"SubprocVecEnv: {len(env_fns)} env_fns but {len(seeds)} seeds")
        if step_timeout_s <= 0 or reset_timeout_s <= 0:
            raise ValueError(f"SubprocVecEnv: timeouts must be > 0, got step {step_timeout_s}, reset {reset_timeout_s}")
        if max_consecutive_restarts < 0:
            raise ValueError(f"SubprocVecEnv: max_consecutive_restarts must be >= 0, got {max_consecutive_restarts}")
        if context not in _CONTEXTS:
            raise ValueError(f"SubprocVecEnv: context must be one of {_CONTEXTS}, got {context!r}")
        self.env_fns = env_fns
        self.seeds = seeds
        self.step_timeout_s = float(step_timeout_s)
        self.reset_timeout_s = float(reset_timeout_s)
        self.max_consecutive_restarts = int(max_consecutive_restarts)
        self.context = context

        self.num_envs = len(env_fns)
        self.single_observation_space: gymnasium.Space | None = None
        self.single_action_space: gymnasium.Space | None = None
        self.restarts = 0
        self.restarts_per_env = [0] * self.num_envs
        self.last_errors: list[str | None] = [None] * self.num_envs  # last failure of each env, for logs

        self._ctx = multiprocessing.get_context(context)
        self._names = [_describe(fn) for fn in env_fns]
        self._workers: list[_Worker | None] = [None] * self.num_envs
        self._consecutive = [0] * self.num_envs
        self._broken: dict[int, str] = {}  # envs whose worker is known dead / out of sync, restarted next step
        self._pending: dict[int, str | None] = {}  # envs sent a step (failure reason if the send failed)
        self._deadline = 0.0
        self._last_obs: list[Any] = [None] * self.num_envs
        self._has_reset = False
        self._closed = False
        try:
            for k in range(self.num_envs):
                self._workers[k] = self._start(k, seeds[k])
            self._recover({}, fresh=set(range(self.num_envs)), reset_envs=set(), reset_seeds={}, do_reset=False)
        except BaseException:
            self._kill_all()
            raise

    # -- public protocol -------------------------------------------------------------------------------

    def reset(self, seeds: Sequence[int] | None = None) -> tuple[np.ndarray, list[dict]]:
        """Reset every env with its seed and return the stacked first observations and the infos.

        Args:
            seeds: optional per-env seeds for this reset; default each worker's own seed (``seeds[k]``,
                or its restart seed after a restart).
        """
        self._check_open()
        if seeds is not None and len(seeds) != self.num_envs:
            raise ValueError(f"SubprocVecEnv.reset: {len(seeds)} seeds for {self.num_envs} envs")
        override = {} if seeds is None else {k: int(s) for k, s in enumerate(seeds)}
        failures, self._broken = dict(self._broken), {}
        results, errors = self._recover(
            failures, fresh=set(), reset_envs=set(range(self.num_envs)) - set(failures), reset_seeds=override,
            do_reset=True,
        )
        obs_list, infos = [], []
        for k in range(self.num_envs):
            obs, info = results[k]
            info = dict(info)
            if k in errors:
                info.update(restarted=True, error=errors[k])
            obs_list.append(obs)
            infos.append(info)
            self._last_obs[k] = obs
        self._has_reset = True
        return np.stack(obs_list), infos

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[dict]]:
        """Step every env with ``actions[k]``; restart the envs that fail (see the module docstring).

        Args:
            actions: one picklable action per env, indexed by env (an array ``[N, ...]``, a list, ...).
        """
        if len(actions) != self.num_envs:
            raise ValueError(f"SubprocVecEnv.step: {len(actions)} actions for {self.num_envs} envs")
        envs = range(self.num_envs)
        self.step_async(actions, envs)
        return self.step_wait(envs)

    def step_async(self, actions: Any, envs: Sequence[int]) -> None:
        """Send ``actions[i]`` to env ``envs[i]`` and return at once; :meth:`step_wait` collects the results
        (so a learner can compute one group's actions while another group's games step)."""
        self._check_open()
        if not self._has_reset:
            raise RuntimeError("SubprocVecEnv.step: call reset() first")
        envs = [int(k) for k in envs]
        if len(actions) != len(envs):
            raise ValueError(f"SubprocVecEnv.step_async: {len(actions)} actions for {len(envs)} envs")
        for i, k in enumerate(envs):
            if k in self._pending:
                raise RuntimeError(f"SubprocVecEnv.step_async: env {k} is already stepping")
            self._pending[k] = None
            if k in self._broken:
                self._pending[k] = self._broken.pop(k)
                continue
            try:
                self._workers[k].send("step", actions[i])
            except _WorkerFailure as failure:
                self._pending[k] = failure.reason
        self._deadline = time.monotonic() + self.step_timeout_s

    def step_wait(self, envs: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[dict]]:
        """The results of the steps :meth:`step_async` sent to ``envs`` (in that order); failed envs are
        restarted and their transition is a truncation (module docstring)."""
        envs = [int(k) for k in envs]
        missing = [k for k in envs if k not in self._pending]
        if missing:
            raise RuntimeError(f"SubprocVecEnv.step_wait: envs {missing} were not sent a step")
        failures = {k: self._pending[k] for k in envs if self._pending[k] is not None}
        results: dict[int, tuple] = {}
        for k in envs:
            del self._pending[k]
            if k in failures:
                continue
            try:
                results[k] = self._workers[k].recv(self._deadline, "step", self.step_timeout_s)
                self._consecutive[k] = 0
            except _WorkerFailure as failure:
                failures[k] = failure.reason
                if failure.tb:
                    log.debug("env %d (%s) traceback:\n%s", k, self._names[k], failure.tb)
        recovered: dict[int, tuple] = {}
        if failures:
            recovered, _ = self._recover(failures, fresh=set(), reset_envs=set(), reset_seeds={}, do_reset=True)

        n = len(envs)
        obs_list, infos = [], []
        rewards = np.zeros(n, dtype=np.float32)
        terminated = np.zeros(n, dtype=np.bool_)
        truncated = np.zeros(n, dtype=np.bool_)
        for i, k in enumerate(envs):
            if k in results:
                obs, reward, term, trunc, info = results[k]
                rewards[i], terminated[i], truncated[i] = reward, term, trunc
            else:  # §4, step 4: an interrupted transition, truncated, bootstrapped from the last good obs
                obs, _ = recovered[k]
                truncated[i] = True
                info = {"cost": 0.0, "final_obs": self._last_obs[k], "restarted": True, "error": failures[k]}
            obs_list.append(obs)
            infos.append(info)
            self._last_obs[k] = obs
        return np.stack(obs_list), rewards, terminated, truncated, infos

    def render(self, k: int = 0) -> Any:
        """Env ``k``'s ``render()`` (an RGB array for ``render_mode="rgb_array"`` envs).

        Args:
            k: the env index (default 0).
        """
        return self.call(k, "render")

    def call(self, k: int, method_name: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``method_name(*args, **kwargs)`` on env ``k`` in its worker (or read the attribute).

        Raises :class:`EnvWorkerError` if the env raises or the worker dies or times out; a dead or
        timed-out worker is restarted on the next ``step`` / ``reset``.

        Args:
            k: the env index.
            method_name: a method or attribute of the env (wrappers are searched with ``get_wrapper_attr``).
            *args: positional arguments of the method.
            **kwargs: keyword arguments of the method.
        """
        self._check_open()
        if not 0 <= k < self.num_envs:
            raise IndexError(f"SubprocVecEnv.call: env index {k} out of range for {self.num_envs} envs")
        if k in self._broken:
            raise EnvWorkerError(
                f"env {k} ({self._names[k]}) is down ({self._broken[k]}); it restarts on the next step"
            )
        worker = self._workers[k]
        try:
            worker.send("call", (method_name, args, kwargs))
            return worker.recv(time.monotonic() + self.step_timeout_s, f"call {method_name!r}", self.step_timeout_s)
        except _WorkerFailure as failure:
            if not failure.remote:  # dead or out of sync: kill now, restart with the next step
                worker.kill()
                self._broken[k] = failure.reason
            raise EnvWorkerError(
                f"env {k} ({self._names[k]}): {method_name} failed: {_one_line(failure.reason)}"
            ) from None

    def worker_pids(self) -> list[int]:
        """PIDs of the live worker processes, in env order (a dead worker is left out)."""
        return [w.process.pid for w in self._workers if w is not None and w.process.is_alive()]

    def close(self, timeout_s: float = 5.0) -> None:
        """Close every worker: send ``close``, join within ``timeout_s``, then kill what is left. Idempotent.

        Args:
            timeout_s: how long all workers together get to exit on their own (default 5 s).
        """
        if self._closed:
            return
        self._closed = True
        workers = [w for w in self._workers if w is not None]
        for w in workers:
            try:
                w.conn.send(("close", None))
            except _PIPE_ERRORS:
                pass
        deadline = time.monotonic() + timeout_s
        for w in workers:
            w.process.join(max(0.0, deadline - time.monotonic()))
        for w in workers:
            w.kill()  # a no-op signal for the workers that exited; reaps and closes the pipe
        self._workers = [None] * self.num_envs

    def __enter__(self) -> SubprocVecEnv:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SubprocVecEnv(num_envs={self.num_envs}, context={self.context!r}, restarts={self.restarts})"

    # -- supervision -----------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("SubprocVecEnv: used after close()")

    def _start(self, k: int, seed: int) -> _Worker:
        """Start env ``k``'s worker (does not wait for it)."""
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=_worker_main, args=(child_conn, self.env_fns[k], seed), name=f"env-worker-{k}", daemon=True
        )
        try:
            process.start()
        finally:
            child_conn.close()  # the child holds its own copy: a dead child now means EOF here
        _LIVE_WORKERS[process] = os.getpid()
        return _Worker(process, parent_conn, seed)

    def _restart(self, k: int, reason: str) -> None:
        """§4, steps 1, 2 and 5: kill env ``k``'s worker, count the restart, start a new worker."""
        self.last_errors[k] = reason
        self._consecutive[k] += 1
        if self._workers[k] is not None:
            self._workers[k].kill()  # 1. by the PID it started
        if self._consecutive[k] > self.max_consecutive_restarts:
            self._workers[k] = None
            self._broken[k] = reason  # a later step or reset tries once more and raises again
            raise RuntimeError(
                f"SubprocVecEnv: env {k} ({self._names[k]}) failed {self._consecutive[k]} consecutive times "
                f"(max_consecutive_restarts={self.max_consecutive_restarts}); last error: {_one_line(reason)}"
            )
        self.restarts += 1  # 5.
        self.restarts_per_env[k] += 1
        seed = restart_seed(self.seeds[k], self.restarts_per_env[k])  # 2.
        warnings.warn(
            f"SubprocVecEnv: env {k} ({self._names[k]}) failed ({_one_line(reason)}); restart "
            f"{self.restarts_per_env[k]} with seed {seed}",
            RuntimeWarning,
            stacklevel=4,
        )
        self._workers[k] = self._start(k, seed)

    def _recover(
        self,
        failures: dict[int, str],
        fresh: set[int],
        reset_envs: set[int],
        reset_seeds: dict[int, int],
        do_reset: bool,
    ) -> tuple[dict[int, tuple], dict[int, str]]:
        """Restart the ``failures``, wait for the ``fresh`` workers' handshake, reset ``reset_envs`` (and
        every restarted env if ``do_reset``), retrying whatever fails, all envs in parallel.

        Returns ``({k: (obs, info)} of the resets, {k: last error} of the envs restarted here)``.
        """
        results: dict[int, tuple] = {}
        restarted: dict[int, str] = {}
        reset_envs = set(reset_envs)
        while True:
            for k in sorted(failures):  # 1., 2. (the seed) and 5.
                self._restart(k, failures[k])
                restarted[k] = failures[k]
                reset_seeds.pop(k, None)  # a replacement starts from its own restart seed
                fresh.add(k)
                if do_reset:
                    reset_envs.add(k)
            failures = {}
            deadline = time.monotonic() + self.reset_timeout_s
            for k in sorted(fresh):  # the worker built its env and sent its spaces
                try:
                    obs_space, act_space = self._workers[k].recv(deadline, "env construction", self.reset_timeout_s)
                    if k == 0 or self.single_observation_space is None:
                        self.single_observation_space, self.single_action_space = obs_space, act_space
                except _WorkerFailure as failure:
                    failures[k] = failure.reason
            fresh = set()
            pending = sorted(reset_envs - set(failures))
            for k in pending:  # 3. reset, in parallel
                try:
                    self._workers[k].send("reset", reset_seeds.get(k, self._workers[k].seed))
                except _WorkerFailure as failure:
                    failures[k] = failure.reason
            deadline = time.monotonic() + self.reset_timeout_s
            for k in pending:
                if k in failures:
                    continue
                try:
                    results[k] = self._workers[k].recv(deadline, "reset", self.reset_timeout_s)
                    reset_envs.discard(k)
                except _WorkerFailure as failure:
                    failures[k] = failure.reason
            if not failures:
                return results, restarted

    def _kill_all(self) -> None:
        for w in self._workers:
            if w is not None:
                w.kill()
        self._workers = [None] * self.num_envs


@atexit.register
def _kill_remaining_workers() -> None:
    """``atexit`` hook: SIGKILL every worker process this module started that is still alive."""
    for process, owner in list(_LIVE_WORKERS.items()):
        if owner != os.getpid():
            continue
        try:
            if process.exitcode is None:  # not reaped yet, so its PID is still its own
                _kill_process(process)
            process.join(1.0)
        except (OSError, ValueError, AssertionError):
            pass
        _LIVE_WORKERS.pop(process, None)

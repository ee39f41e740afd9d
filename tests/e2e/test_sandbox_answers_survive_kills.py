"""No answer is lost to a crash, and none is shown twice: `python run.py --sandbox` with
the real py-cord client and the real openai SDK, the llm or the gateway SIGKILLed in the
middle of an answer (the stand-in streams that answer slowly).

One sandbox serves the module; each test moves the emulator's clock past its rate-limit
windows first. Every wait polls the emulator or the database with a timeout.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from sandbox.openai_standin import long_answer
from services.llm.stream import split_message
from tests.support.harness import wait_for
from tests.support.sandbox import FAST_CORE, LLM_TABLE, Sandbox, Standin, running_sandbox

pytestmark = pytest.mark.timeout(90)

# The gateway's second restart in a row waits 2 s: a send then meets no gateway at all
# for that long, instead of one that is back in a fraction of a second.
GATEWAY_SLOW_SECOND_RESTART = """[services.gateway]
backoff_initial_s = 2.0
backoff_max_s = 2.0
stable_after_s = 60
"""
TOML = (
    FAST_CORE.replace("[services.gateway]\n", GATEWAY_SLOW_SECOND_RESTART)
    + LLM_TABLE
    + """[services.llm.settings]
edit_interval_s = 0.3
gateway_timeout_s = 10
user_rate = { tokens = 100, per_s = 60 }
guild_rate = { tokens = 1000, per_s = 60 }
"""
)
WORDS = " ".join(f"word{i}" for i in range(16))  # 16 pieces: ~5 s at 0.3 s each
SLOW = {"kind": "slow_stream", "token_delay_s": 0.3}


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    with running_sandbox(tmp_path_factory.mktemp("sandbox-kills"), TOML) as box:
        yield box


@pytest.fixture
def llm(box: Sandbox) -> Standin:
    standin = Standin(box.state["llm_url"])
    standin.reset()
    box.post("clock", {"advance_s": 10})  # past every rate-limit window
    return standin


def mention(box: Sandbox, text: str, channel: str = "general") -> str:
    return box.say(f"<@{box.state['bot_user_id']}> {text}", channel=channel)


def answer(box: Sandbox, mid: str, channel: str = "general") -> list[dict[str, Any]]:
    """The bot's messages after `mid`: its answer, part by part."""
    return [m for m in box.bot_messages(channel) if int(m["id"]) > int(mid)]


def outcome(box: Sandbox, question_id: str) -> str:
    """Recorded once every Discord write of the answer is done."""
    rows = wait_for(
        lambda: box.db("SELECT outcome FROM llm_exchanges WHERE id = ?", question_id),
        45,
        f"the exchange for {question_id}",
    )
    return rows[0][0]


def kill(box: Sandbox, name: str) -> None:
    """SIGKILL a service, and wait for the supervisor to have it RUNNING again."""
    old = box.service(name)
    os.kill(old["pid"], signal.SIGKILL)
    box.wait_state(name, "RUNNING", pid_not=old["pid"], timeout=20)


def test_an_llm_killed_while_answering_resumes_and_the_channel_shows_one_complete_answer(
    box: Sandbox, llm: Standin
) -> None:
    llm.faults(SLOW)
    mid = mention(box, f"!echo {WORDS}")
    [partial] = wait_for(lambda: answer(box, mid), 15, "the first words of the answer")
    assert partial["content"] != WORDS, "still streaming"
    kill(box, "llm")
    assert outcome(box, mid) == "ok"
    [reply] = answer(box, mid)
    assert reply["id"] == partial["id"], "continued in its own message, not posted again"
    assert reply["content"] == WORDS and reply["reply_to_id"] == mid


def test_a_long_answer_cut_by_a_kill_is_continued_in_its_own_messages_none_posted_twice(
    box: Sandbox, llm: Standin
) -> None:
    llm.faults({"kind": "slow_stream", "token_delay_s": 0.01})  # ~5 s for 3,000 characters
    mid = mention(box, "!long 3000", channel="admin")
    started = wait_for(lambda: answer(box, mid, "admin")[1:], 20, "the second message")
    kill(box, "llm")
    assert outcome(box, mid) == "ok"
    parts = answer(box, mid, "admin")
    assert [p["content"] for p in parts] == split_message(long_answer(3000))
    assert parts[1]["id"] == started[0]["id"], "the second part continued, not reposted"


def test_an_ask_whose_llm_is_killed_is_resumed_into_its_one_original_response(
    box: Sandbox, llm: Standin
) -> None:
    llm.faults(SLOW)
    body = {
        "channel_id": box.channels["general"],
        "user_id": box.users["alice"],
        "name": "ask",
        "options": {"prompt": f"!echo {WORDS}"},
    }
    iid = box.post("interactions", body)["id"]

    def responses() -> list[dict[str, Any]]:
        return box.get(f"interactions/{iid}")["responses"]

    wait_for(lambda: [r for r in responses() if r["kind"] == "edit"], 15, "the first words")
    kill(box, "llm")
    assert outcome(box, iid) == "ok"
    wait_for(lambda: responses()[-1]["content"] == WORDS, 15, "the whole answer")
    kinds = [r["kind"] for r in responses()]
    assert kinds.count("callback") == 1 and "followup" not in kinds, kinds
    assert {r["message_id"] for r in responses() if r["kind"] == "edit"} == {
        responses()[-1]["message_id"]
    }, "one original response, edited"


def test_a_gateway_killed_while_the_llm_streams_makes_its_writes_wait_and_succeed(
    box: Sandbox, llm: Standin
) -> None:
    """Three answers streaming; the gateway is killed, then frozen with their writes in
    flight and killed again (and stays away 2 s): every write waits for the gateway to be
    back and goes through, none fails, and the breaker does not turn the restart into a
    refusal."""
    channels = ["general", "admin", "stats"]
    llm.faults(*[SLOW] * len(channels))
    asked = {ch: mention(box, f"!echo {WORDS}", channel=ch) for ch in channels}
    for ch, mid in asked.items():
        wait_for(lambda ch=ch, mid=mid: answer(box, mid, ch), 15, f"the first words in {ch}")
    kill(box, "gateway")
    frozen = box.service("gateway")
    os.kill(frozen["pid"], signal.SIGSTOP)  # the writes that come now stay in flight
    time.sleep(1.0)
    kill(box, "gateway")
    for ch, mid in asked.items():
        assert outcome(box, mid) == "ok"
        [reply] = answer(box, mid, ch)
        assert reply["content"] == WORDS, f"every write in {ch} went through"
    log = (box.data / "logs" / "llm.log").read_text()
    failed = [line for line in log.splitlines() if re.search(r"llm: discord\.\S+ failed", line)]
    assert failed == [], "not one write failed, not even those in flight at the kill"


def test_an_ask_whose_gateway_dies_before_the_llm_took_it_on_is_handed_on_after_resume(
    box: Sandbox, llm: Standin
) -> None:
    """The llm is frozen: the gateway defers the /ask and waits for it. The gateway is
    killed; its successor RESUMEs before the interaction and hands it on. Then the llm is
    killed too, and its successor answers."""
    frozen = box.service("llm")
    os.kill(frozen["pid"], signal.SIGSTOP)
    try:
        body = {
            "channel_id": box.channels["general"],
            "user_id": box.users["alice"],
            "name": "ask",
            "options": {"prompt": "!echo handed on"},
        }
        iid = box.post("interactions", body)["id"]
        wait_for(lambda: box.get(f"interactions/{iid}")["responses"], 15, "the deferral")
        kill(box, "gateway")
    finally:
        os.kill(frozen["pid"], signal.SIGKILL)
    assert outcome(box, iid) == "ok"
    got = box.get(f"interactions/{iid}")["responses"]
    assert [r["kind"] for r in got].count("callback") == 1
    assert [r for r in got if r["kind"] == "edit"][-1]["content"] == "handed on"

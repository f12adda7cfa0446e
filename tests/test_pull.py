"""Pull lines over real uvicorn: remote workers receive jobs, stream answers, lose leases, get refused;
real `guestqueue worker` processes, one killed mid-job; two instances on one Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import MockUpstream, Received, stream_events, wait_until
from .support.admin import ADMIN, admin_server, make_application, make_key, make_line
from .support.instances import shared_instances
from .support.lines import serve_lines
from .support.pull import PULL, follow_job, jobs_url, receive_jobs, worker_process


async def test_a_worker_receives_a_job_and_its_chunks_reach_the_guest(tmp_path: Path) -> None:
    async with serve_lines(tmp_path, PULL) as (_, lines), httpx.AsyncClient(timeout=30) as client:
        asked = asyncio.create_task(stream_events(client, f"{lines}/gpu/chat", json={"query": "two words"}))
        [job] = await receive_jobs(client, lines)
        assert job["request"] == {"query": "two words", "parameters": {}, "session_id": None}
        assert job["receive_count"] == 1 and job["receipt"].startswith("gpu.")
        jobs = jobs_url(lines)
        assert (await client.post(f"{jobs}/{job['receipt']}/chunks", json=["Hello, ", "guest"])).json()["chunks"] == 2
        done = await client.post(f"{jobs}/{job['receipt']}/complete", json={"suggested_questions": ["More?"]})
        assert done.status_code == 200, done.text
        events = await asked
        names = [e.name for e in events]
        assert names[-1] == "workflow_complete" and "processing" in names
        assert events[-1].data["answer"] == "Hello, guest" and events[-1].data["suggested_questions"] == ["More?"]
        late = await client.post(f"{jobs}/{job['receipt']}/chunks", json=["again"])
        assert late.status_code == 410 and late.json()["code"] == "receipt_expired"


async def test_guests_hear_processing_only_when_a_worker_takes_the_job(tmp_path: Path) -> None:
    async with serve_lines(tmp_path, PULL) as (_, lines), httpx.AsyncClient(timeout=30) as client:
        heard: list[Received] = []
        asked = asyncio.create_task(follow_job(client, f"{lines}/gpu/chat", {"query": "q"}, heard))
        await asyncio.sleep(0.6)  # started in the line (a free slot), but no worker yet
        status = (await client.get(f"{lines}/gpu/queue/status")).json()
        assert status["active_requests"] == 1
        [job] = await receive_jobs(client, lines)
        jobs = jobs_url(lines)
        await client.post(
            f"{jobs}/{job['receipt']}/chunks", content=b'"a"\n"b"\n', headers={"Content-Type": "application/x-ndjson"}
        )
        await client.post(f"{jobs}/{job['receipt']}/complete")
        await asked
        # Until a worker takes the job, its guest goes on hearing it is first in line (issue 22 point 5).
        waited = [e for e in heard if e.name == "queued"]
        assert len(waited) >= 2 and all(e.data["queue_position"] == 1 for e in waited), waited
        assert [e.name for e in heard[len(waited) :]] == [
            "processing",
            "answer_chunk",
            "answer_chunk",
            "workflow_complete",
        ]


async def test_an_extended_lease_keeps_its_job_and_an_expired_receipt_is_refused(tmp_path: Path) -> None:
    async with serve_lines(tmp_path, PULL) as (_, lines), httpx.AsyncClient(timeout=30) as client:
        jobs = jobs_url(lines)
        asked = asyncio.create_task(stream_events(client, f"{lines}/gpu/chat", json={"query": "kept"}))
        [job] = await receive_jobs(client, lines, visibility_timeout_sec=1)
        for _ in range(5):  # 2.5 s: well past the first lease
            await asyncio.sleep(0.5)
            extended = await client.post(f"{jobs}/{job['receipt']}/extend", json={"visibility_timeout_sec": 1})
            assert extended.status_code == 200, extended.text
        await client.post(f"{jobs}/{job['receipt']}/chunks", json=["still mine"])
        await client.post(f"{jobs}/{job['receipt']}/complete")
        assert (await asked)[-1].data["answer"] == "still mine"

        other = asyncio.create_task(stream_events(client, f"{lines}/gpu/chat", json={"query": "lost"}))
        [first] = await receive_jobs(client, lines, visibility_timeout_sec=1)
        await asyncio.sleep(1.5)  # its lease runs out: back at the front
        gone = await client.post(f"{jobs}/{first['receipt']}/chunks", json=["too late"])
        assert gone.status_code == 410
        assert (await client.post(f"{jobs}/{first['receipt']}/extend")).status_code == 410
        [again] = await receive_jobs(client, lines)
        assert again["job_id"] == first["job_id"] and again["receive_count"] == 2
        await client.post(f"{jobs}/{again['receipt']}/chunks", json=["second worker"])
        await client.post(f"{jobs}/{again['receipt']}/complete")
        events = await other
        assert events[-1].data["answer"] == "second worker"
        assert [e.name for e in events].count("processing") == 1


async def test_a_lease_lost_mid_answer_ends_interrupted_and_too_many_receives_end_unavailable(tmp_path: Path) -> None:
    toml = PULL + "max_receive_count = 2\n"
    async with serve_lines(tmp_path, toml) as (_, lines), httpx.AsyncClient(timeout=30) as client:
        jobs = jobs_url(lines)
        asked = asyncio.create_task(stream_events(client, f"{lines}/gpu/chat", json={"query": "a"}))
        [job] = await receive_jobs(client, lines, visibility_timeout_sec=1)
        await client.post(f"{jobs}/{job['receipt']}/chunks", json=["half an answer"])
        events = await asked
        assert events[-1].name == "error" and events[-1].data["code"] == "interrupted"

        asked = asyncio.create_task(stream_events(client, f"{lines}/gpu/chat", json={"query": "b"}))
        for count in (1, 2):
            [job] = await receive_jobs(client, lines, visibility_timeout_sec=1)
            assert job["receive_count"] == count
        events = await asked
        assert events[-1].name == "error" and events[-1].data["code"] == "upstream_unavailable"


async def test_chunks_sent_again_are_taken_once_and_a_gap_is_refused_with_the_offset(tmp_path: Path) -> None:
    async with serve_lines(tmp_path, PULL) as (_, lines), httpx.AsyncClient(timeout=30) as client:
        asked = asyncio.create_task(stream_events(client, f"{lines}/gpu/chat", json={"query": "q"}))
        [job] = await receive_jobs(client, lines)
        chunks, complete = f"{jobs_url(lines)}/{job['receipt']}/chunks", f"{jobs_url(lines)}/{job['receipt']}/complete"
        # What a hostile or broken worker might send as an offset: one clear 422 each, nothing taken.
        for bad in ("-1", "abc", "1e3", "9" * 13, ""):
            refused = await client.post(chunks, params={"offset": bad}, json=["x"])
            assert refused.status_code == 422 and refused.json()["code"] == "invalid_field", (bad, refused.text)
        for bad_json in (-1, True, "3", 1.5, [0]):
            refused = await client.post(complete, json={"offset": bad_json})
            assert refused.status_code == 422 and refused.json()["code"] == "invalid_field", (bad_json, refused.text)
        assert (await client.post(chunks, params={"offset": 0}, json=["a", "b"])).json()["offset"] == 2
        again = await client.post(
            chunks, params={"offset": 1}, content=b'"b"\n"c"\n', headers={"Content-Type": "application/x-ndjson"}
        )  # "b" sent again
        assert again.json() == {"receipt": job["receipt"], "chunks": 2, "offset": 3}
        gap = await client.post(chunks, params={"offset": 5}, json=["f"])
        assert gap.status_code == 409 and gap.json()["code"] == "offset_mismatch" and gap.json()["offset"] == 3
        assert (await client.post(chunks, json=[])).json()["offset"] == 3  # an empty post asks where it is
        short = await client.post(complete, json={"offset": 2})
        assert short.status_code == 409 and short.json()["offset"] == 3
        assert (await client.post(complete, json={"offset": 3})).status_code == 200
        events = await asked
        assert [e.data for e in events if e.name == "answer_chunk"] == ["a", "b", "c"]
        assert events[-1].data["answer"] == "abc"


async def test_a_worker_with_the_wrong_key_is_refused(tmp_path: Path, upstream: MockUpstream) -> None:
    async with admin_server(tmp_path, upstream) as (_, api), httpx.AsyncClient(timeout=10) as client:
        app = await make_application(client, api, "gpus")
        await make_line(client, api, name="gpu", application_id=app, upstream_kind="pull", upstream_interval_sec=0)
        asker = await make_key(client, api, app, permissions={"gpu": ["READ", "WRITE"]})
        worker = await make_key(client, api, app, permissions={"gpu": ["WORK"]})
        receive = f"{api}/lines/gpu/jobs/receive"
        refused = await client.post(receive, json={"wait_sec": 0}, headers={"Authorization": f"Bearer {asker}"})
        assert refused.status_code == 403 and refused.json()["code"] == "forbidden"
        assert (await client.post(receive, json={"wait_sec": 0})).status_code == 401
        asked = asyncio.create_task(stream_events(client, f"{api}/lines/gpu/chat", json={"query": "hi"}))
        taken = await client.post(receive, json={"wait_sec": 5}, headers={"Authorization": f"Bearer {worker}"})
        receipt = taken.json()["jobs"][0]["receipt"]
        chunks = f"{api}/jobs/{receipt}/chunks"
        assert (await client.post(chunks, json=["x"], headers={"X-API-Key": asker})).status_code == 403
        assert (await client.post(chunks, json=["ok"], headers={"X-API-Key": worker})).status_code == 200
        await client.post(f"{api}/jobs/{receipt}/complete", headers={"X-API-Key": worker})
        assert (await asked)[-1].data["answer"] == "ok"
        assert (await client.post(receive, json={"wait_sec": 0}, headers=ADMIN)).status_code == 200


async def test_bad_worker_requests_get_clear_errors(tmp_path: Path) -> None:
    toml = PULL + "[lines.chat]\nupstream_interval_sec = 0\n"
    async with serve_lines(tmp_path, toml) as (_, lines), httpx.AsyncClient(timeout=10) as client:
        assert (await client.post(f"{lines}/chat/jobs/receive")).status_code == 404
        for body in ({"max_jobs": 0}, {"wait_sec": 99}, {"visibility_timeout_sec": "x"}):
            reply = await client.post(f"{lines}/gpu/jobs/receive", json=body)
            assert reply.status_code == 422, body
        assert (await client.post(f"{jobs_url(lines)}/nope.xyz/chunks", json=["a"])).status_code == 410


async def test_a_worker_killed_before_its_first_chunk_leaves_the_job_to_the_other_once(tmp_path: Path) -> None:
    # 3.5 s alone, 10 s in the suite beside other tests (two worker processes start): the guest's
    # call gets 30 s: the tests' usual 10 s request timeout is not what this checks.
    pull = PULL + "request_timeout_sec = 30\n"
    async with serve_lines(tmp_path, pull) as (running, lines), httpx.AsyncClient(timeout=30) as client:
        server = lines.split("/api/v1/")[0]
        with worker_process(tmp_path, server, "A", "stall") as stalled:
            heard: list[Received] = []
            asked = asyncio.create_task(follow_job(client, f"{lines}/gpu/chat", {"query": "who answers"}, heard))
            await wait_until(lambda: any(e.name == "processing" for e in heard), 10, "worker A took the job")
            stalled.kill()  # SIGKILL mid-job: no fail, no more extends
            with worker_process(tmp_path, server, "B", "echo"):
                await asyncio.wait_for(asked, 40)
        assert heard[-1].name == "workflow_complete", heard[-1]
        assert heard[-1].data["answer"] == "[B] who answers "
        assert heard[-1].data["suggested_questions"] == ["And then?"]
        assert [e.name for e in heard].count("processing") == 1
        assert running.guest.lineup is not None
        assert running.guest.lineup.get("gpu").pool.upstream_calls["ok"] == 1


@pytest.fixture
def pair(tmp_path: Path, redis_url: str, redis_prefix: str) -> Iterator[list[str]]:
    config = tmp_path / "pull.toml"
    config.write_text(PULL)
    for bases in shared_instances(tmp_path, 2, redis_url, redis_prefix, config=str(config)):
        yield [base.removesuffix("/guest") + "/lines" for base in bases]


async def test_with_two_instances_a_worker_on_one_serves_guests_of_the_other(pair: list[str], tmp_path: Path) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        asked = [
            asyncio.create_task(stream_events(client, f"{pair[0]}/gpu/chat", json={"query": f"q {n}"}))
            for n in range(3)
        ]
        server = pair[1].split("/api/v1/")[0]
        began = time.monotonic()
        with worker_process(tmp_path, server, "far", "echo"):
            results = await asyncio.wait_for(asyncio.gather(*asked), 30)
        assert time.monotonic() - began < 20
    answers = sorted(events[-1].data.get("answer", events[-1].data) for events in results)
    assert answers == ["[far] q 0 ", "[far] q 1 ", "[far] q 2 "]

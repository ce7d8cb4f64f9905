"""Beam's Python SDK worker pool (``worker_pool_main``), bound to one loopback address.

``worker_pool_main`` always binds ``[::]:PORT``, so two pools on one machine need two ports,
but every TaskManager dials the same ``--environment_config`` address.  Bound to
``127.0.0.N:PORT`` instead, each TaskManager reaches its own pool through the same name
(``flexprice-sdk-pool``), which its JVM resolves to its own address (``jdk.net.hosts.file``,
written by ``scripts/flink.sh``).  Everything else is Beam's servicer, unchanged.

    python worker_pool.py --host 127.0.0.2 --service_port 50200 --container_executable X
"""

from __future__ import annotations

import argparse
import logging
import time

import grpc
from apache_beam.portability.api import beam_fn_api_pb2_grpc
from apache_beam.runners.worker.worker_pool_main import BeamFnExternalWorkerPoolServicer
from apache_beam.utils import thread_pool_executor


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--service_port", type=int, required=True)
    parser.add_argument("--container_executable", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    server = grpc.server(thread_pool_executor.shared_unbounded_instance(),
                         options=[("grpc.http2.max_pings_without_data", 0),
                                  ("grpc.http2.max_ping_strikes", 0),
                                  ("grpc.so_reuseport", 0)])
    address = f"{args.host}:{args.service_port}"
    if not server.add_insecure_port(address):
        raise SystemExit(f"cannot bind {address}")
    pool = BeamFnExternalWorkerPoolServicer(use_process=True,
                                            container_executable=args.container_executable)
    beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(pool, server)
    server.start()
    logging.info("SDK worker pool (worker_pool_main) listening at %s", address)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()

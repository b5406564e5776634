"""A Flower federation on loopback: one server (FedAvg) and N clients, each training our engine
locally on its own shard of token windows, for R rounds. Needs `pip install flwr`.

    python crates/python/examples/flower_simulation.py --clients 4 --rounds 3

Prints one JSON line: the distributed losses per round, which the test checks fall.
"""

import argparse
import json
import signal
import socket
import threading
import time

import numpy as np


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_client_later(address, client):
    import flwr

    host, port = address.rsplit(":", 1)
    for _ in range(600):  # up to 60 s for the server to listen
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    flwr.client.start_client(server_address=address, client=client, insecure=True)


def run(clients=4, rounds=3, local_steps=3, seed=0):
    import flwr
    from flwr.server.strategy import FedAvg

    import optimization_core as oc
    from optimization_core.federated import FlowerClient

    config = oc.TransformerConfig(vocab_size=64, d_model=32, n_heads=2, n_kv_heads=2, n_layers=1, d_ff=64,
                                  max_seq_len=32, train={"batch_size": 4, "seq_len": 16, "lr": 3e-3,
                                                         "warmup_steps": 1, "steps": 100})
    # A learnable signal: each window counts up modulo the vocabulary from a random start.
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, 64, size=(clients, 16))
    shards = [(starts[c][:, None] + np.arange(17)[None, :]) % 64 for c in range(clients)]
    address = f"127.0.0.1:{free_port()}"
    strategy = FedAvg(min_fit_clients=clients, min_evaluate_clients=clients, min_available_clients=clients)
    workers = []
    for c in range(clients):
        model = oc.create_truthgpt_model(config=config)
        shard = shards[c]
        client = FlowerClient(model, train_data=lambda shard=shard: [shard[i:i + 4] for i in range(0, 16, 4)],
                              eval_data=shard.reshape(-1), local_steps=local_steps)
        worker = threading.Thread(target=start_client_later, args=(address, client.to_client()))
        worker.start()
        workers.append(worker)
    # The server installs signal handlers, so it runs on the main thread (ours are put back
    # after it); the clients, on threads, connect once it is listening.
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        history = flwr.server.start_server(server_address=address, strategy=strategy,
                                           config=flwr.server.ServerConfig(num_rounds=rounds))
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    for worker in workers:
        worker.join()
    return [loss for _, loss in history.losses_distributed]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import optimization_core as oc

    oc.set_threads(2)
    print(json.dumps({"clients": args.clients, "rounds": args.rounds,
                      "losses_distributed": run(args.clients, args.rounds)}))

"""Reads the TensorBoard events in a log folder with TensorBoard's own reader and prints, as one JSON
line, every scalar tag with its [step, value] pairs. Usage: read_tfevents.py LOGDIR"""
import json
import sys

from tensorboard.backend.event_processing import event_accumulator


def main(logdir):
    acc = event_accumulator.EventAccumulator(logdir, size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    tags = acc.Tags()["scalars"]
    print(json.dumps({t: [[e.step, e.value] for e in acc.Scalars(t)] for t in tags}))


if __name__ == "__main__":
    main(sys.argv[1])

"""An idle worker for the supervision-cost benchmark: READY=1, then WATCHDOG=1
every third of WATCHDOG_USEC over sheepdog's notify socket. Nothing else."""
import os, socket, time

s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.connect(os.environ["NOTIFY_SOCKET"])
s.send(b"READY=1")
period = int(os.environ["WATCHDOG_USEC"]) / 1e6 / 3
while True:
    time.sleep(period)
    s.send(b"WATCHDOG=1")

"""Memory of pending delayed messages (docs/performance.md, "Delayed messages").

Starts a WarrenMQ binary with /tmp/exchext-mem/config.toml (port 25697, data_dir
/tmp/exchext-mem/data: see docs/performance.md), declares an x-delayed-message
exchange, publishes N 16-byte messages with x-delay = 1 hour and prints the broker's
RSS before and after. With "durable", the exchange and queue are durable and the
messages persistent, and the broker is restarted to show recovery time and RSS.

    python3 benches/delayed_memory.py 200000 transient target/release/warrenmq
    python3 benches/delayed_memory.py 200000 durable target/release/warrenmq

Needs pika. A measurement, not a test.
"""
import pika, sys, time, subprocess, os, signal
N = int(sys.argv[1]); durable = sys.argv[2] == "durable"; binpath = sys.argv[3]
def rss(pid):
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1])
subprocess.run(["rm", "-rf", "/tmp/exchext-mem/data"])
p = subprocess.Popen([binpath, "--config", "/tmp/exchext-mem/config.toml"])
time.sleep(1.0)
conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", 25697))
ch = conn.channel()
ch.exchange_declare("delayed", "x-delayed-message", durable=durable, arguments={"x-delayed-type": "direct"})
q = ch.queue_declare("dq", durable=durable).method.queue
ch.queue_bind("dq", "delayed", "k")
time.sleep(0.5)
before = rss(p.pid)
props = pika.BasicProperties(headers={"x-delay": 3600000}, delivery_mode=2 if durable else 1)
body = b"0123456789abcdef"
t = time.time()
for i in range(N):
    ch.basic_publish("delayed", "k", body, props)
ch.queue_declare("dq", passive=True)  # round trip: everything before it was handled
time.sleep(3)
after = rss(p.pid)
print(f"{'durable/persistent' if durable else 'transient'}: {N} pending delayed 16-byte messages: RSS before {before} KiB, after {after} KiB, delta {after-before} KiB = {(after-before)*1024/N:.0f} B/msg (publish {time.time()-t:.1f}s)")
if durable:
    conn.close()
    p.send_signal(signal.SIGTERM); p.wait()
    t = time.time()
    p = subprocess.Popen([binpath, "--config", "/tmp/exchext-mem/config.toml"])
    # wait until it accepts connections
    while True:
        try:
            c = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", 25697)); break
        except Exception: time.sleep(0.2)
    print(f"restart with {N} delayed messages: up in {time.time()-t:.1f}s, RSS {rss(p.pid)} KiB; data dir:", subprocess.run(["du","-sh","/tmp/exchext-mem/data"],capture_output=True,text=True).stdout.strip())
    c.close()
else:
    conn.close()
p.send_signal(signal.SIGTERM); p.wait()

"""Fleet: hosts share their bans through an event log (Redis Streams today).

events.py     PURE  a ban or unban event: encode, sign, verify, decode (every check)
transport.py        the small interface a transport offers (Redis now; NATS or PostgreSQL later)
redis_transport.py  I/O  that interface on Redis: stream, snapshot hash, MINID trimming
link.py       I/O   the daemon's side: a reader and a writer thread, backoff, counters
"""

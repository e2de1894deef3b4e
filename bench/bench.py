#!/usr/bin/env python3
"""valero-db benchmark: snapshot and restore against pg_dump / pg_restore and
the raw floor, side by side, in one run. Run it through the services script:

    scripts/services.sh run python3 bench/bench.py [--rounds 3] [--scale 1.0]

It builds an ERP-like PostgreSQL schema of at least 300 MB (plus a quarter-size
copy to show memory does not grow with size) and a MongoDB database of 200k
varied documents, then prints one table of wall times (median of the rounds),
ratios, stored sizes and peak RSS (from /usr/bin/time -v).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PG_URL = os.environ["VALERO_PG_URL"]
MONGO_URL = os.environ["VALERO_MONGO_URL"]
PG_BIN = os.environ.get("VALERO_PG_BIN", "/usr/lib/postgresql/15/bin")
VENV_PY = os.environ.get("VALERO_VENV_PYTHON") or os.path.join(
    os.environ.get("VALERO_SERVICES_HOME", os.path.expanduser("~/.cache/valero-db-services")), "venv/bin/python")
BIN = os.path.join(ROOT, "target/release/valero-db")


def db_url(name):
    base, _, _ = PG_URL.rpartition("/")
    return f"{base}/{name}"


def sh(args, env=None, quiet=True):
    r = subprocess.run(args, env=env, stdout=subprocess.DEVNULL if quiet else None, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(args)}\n{r.stderr}")


def psql(url, sql):
    r = subprocess.run(["psql", url, "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"psql failed: {r.stderr}")
    return r.stdout.strip()


def timed(args, env=None, cwd=None):
    """Wall seconds and peak RSS (MiB) of one command."""
    out = tempfile.NamedTemporaryFile(delete=False)
    out.close()
    start = time.monotonic()
    r = subprocess.run(["/usr/bin/time", "-v", "-o", out.name] + args, env=env, cwd=cwd,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.monotonic() - start
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(args)}\n{r.stderr[-3000:]}")
    rss = 0
    for line in open(out.name):
        if "Maximum resident set size" in line:
            rss = int(line.split(":")[1]) / 1024
    os.unlink(out.name)
    return wall, rss


def du(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


GENERATE = """
CREATE SCHEMA {s};
SET search_path TO {s};
CREATE TABLE customers (id bigint PRIMARY KEY, name text, email text, city text, created_at timestamptz, credit numeric(12,2), tags jsonb);
INSERT INTO customers SELECT g, 'Kunde ' || g, 'kunde' || g || '@example.de', (ARRAY['Berlin','Hamburg','München','Köln','Leipzig'])[1 + g % 5],
  now() - (g || ' minutes')::interval, (g % 100000) / 7.0, jsonb_build_object('segment', g % 7, 'vip', g % 13 = 0)
  FROM generate_series(1, {customers}) g;
CREATE TABLE products (sku text PRIMARY KEY, title text, price numeric(10,2), attrs jsonb);
INSERT INTO products SELECT 'SKU-' || g, 'Artikel ' || md5(g::text), (g % 5000) / 3.0, jsonb_build_object('w', g % 100, 'c', md5(g::text))
  FROM generate_series(1, 50000) g;
CREATE TABLE journal_lines (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, entry_id bigint, account_no int, booked_at timestamptz,
  debit numeric(15,2), credit numeric(15,2), text text, meta jsonb);
INSERT INTO journal_lines (entry_id, account_no, booked_at, debit, credit, text, meta)
  SELECT g / 4, 1000 + (g * 7919) % 9000, timestamp '2024-01-01' + (g || ' seconds')::interval,
    CASE WHEN g % 2 = 0 THEN (g % 99991) / 100.0 ELSE 0 END, CASE WHEN g % 2 = 1 THEN (g % 99991) / 100.0 ELSE 0 END,
    'Buchung ' || md5(g::text) || ' ' || substr(md5((g * 31)::text), 1, ((g % 24) + 4)::int),
    jsonb_build_object('cost_center', g % 40, 'doc', 'RE-' || g, 'by', 'user' || g % 50)
  FROM generate_series(1::bigint, {lines}) g;
CREATE INDEX journal_lines_account_idx ON journal_lines (account_no, booked_at);
CREATE INDEX journal_lines_entry_idx ON journal_lines (entry_id);
CREATE INDEX customers_email_idx ON customers (email);
ANALYZE;
"""


# A second data set of a different compressibility: receipts of a point of
# sale, many short and high-entropy columns (codes, md5-like identifiers,
# random amounts and dates, moderate text drawn from a vocabulary). The
# main schema repeats long prefixes and compresses far better.
GENERATE_MIXED = """
CREATE SCHEMA {s};
SET search_path TO {s};
SELECT setseed(0.42);
CREATE TABLE receipts (id bigint PRIMARY KEY, receipt_no text, store char(4), till smallint, cashier text, ref text,
  customer_ref uuid, amount numeric(12,2), vat_rate numeric(4,2), currency char(3), booked_on date, booked_at timestamptz,
  items int, payment text, memo text, checksum text);
INSERT INTO receipts SELECT g, 'R' || to_char(g, 'FM0000000000'),
    chr(65 + (random() * 25)::int) || chr(65 + (random() * 25)::int) || lpad((random() * 99)::int::text, 2, '0'),
    (random() * 40)::smallint, 'K' || (random() * 999)::int, substr(md5(random()::text), 1, 12),
    md5(random()::text)::uuid, round((random() * 2000)::numeric, 2), (ARRAY[0, 7, 19])[1 + (random() * 2)::int],
    (ARRAY['EUR', 'EUR', 'EUR', 'CHF', 'USD'])[1 + (random() * 4)::int],
    date '2020-01-01' + (random() * 2000)::int, timestamptz '2020-01-01' + random() * interval '2000 days',
    1 + (random() * 30)::int, (ARRAY['bar', 'karte', 'ec', 'rechnung', 'gutschein'])[1 + (random() * 4)::int],
    (SELECT string_agg((ARRAY['Brot', 'Milch', 'Kaffee', 'Rabatt', 'Pfand', 'Storno', 'Tüte', 'Obst', 'Gemüse',
       'Käse', 'Wurst', 'Getränke', 'Zeitung', 'Tabak', 'Blumen', 'Service'])[1 + (random() * 15)::int], ' ')
       FROM generate_series(1, 2 + (g % 9))),
    md5(g::text || random()::text)
  FROM generate_series(1::bigint, {rows}) g;
ANALYZE;
"""


def build_mixed(schema, scale):
    if psql(PG_URL, f"SELECT count(*) FROM pg_namespace WHERE nspname = '{schema}'") == "1":
        return
    print(f"building PostgreSQL schema {schema} (mixed data) ...", file=sys.stderr)
    sql = GENERATE_MIXED.format(s=schema, rows=int(1_500_000 * scale))
    sh(["psql", PG_URL, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])


def build_pg(schema, scale):
    if psql(PG_URL, f"SELECT count(*) FROM pg_namespace WHERE nspname = '{schema}'") == "1":
        return
    print(f"building PostgreSQL schema {schema} ...", file=sys.stderr)
    sql = GENERATE.format(s=schema, customers=int(200_000 * scale), lines=int(2_600_000 * scale))
    sh(["psql", PG_URL, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])


def build_mongo(n):
    code = f"""
import pymongo, random, datetime
from bson.decimal128 import Decimal128
c = pymongo.MongoClient({MONGO_URL!r})
db = c["bench"]
if db["orders"].estimated_document_count() >= {n}:
    raise SystemExit
db.drop_collection("orders"); db.drop_collection("customers")
random.seed(7)
batch = []
for i in range({n}):
    batch.append({{"_id": i, "customer": "K%06d" % (i % 20000), "at": datetime.datetime(2024, 1, 1) + datetime.timedelta(seconds=i),
                  "total": Decimal128(str(round(random.random() * 1000, 2))), "status": random.choice(["open", "paid", "shipped"]),
                  "lines": [{{"sku": "SKU-%d" % random.randrange(50000), "qty": random.randrange(1, 5)}} for _ in range(1 + i % 4)],
                  "note": "x" * (i % 200)}})
    if len(batch) == 5000:
        db["orders"].insert_many(batch); batch = []
if batch:
    db["orders"].insert_many(batch)
db["customers"].insert_many([{{"_id": "K%06d" % i, "name": "Kunde %d" % i, "tags": ["a", "b"][: i % 3]}} for i in range(20000)])
db["orders"].create_index([("customer", 1), ("at", -1)])
"""
    print(f"building MongoDB database bench ({n} orders) ...", file=sys.stderr)
    sh([VENV_PY, "-c", code])


DRAIN = """
import pymongo, sys
from bson.raw_bson import RawBSONDocument
db = pymongo.MongoClient(sys.argv[1], document_class=RawBSONDocument)["bench"]
n = 0
for name in db.list_collection_names():
    for d in db[name].find({}):
        n += len(d.raw)
print(n)
"""


def config(path, storage, level=None):
    compression = f"compression = {{ level = {level} }}\n" if level else ""
    with open(path, "w") as f:
        f.write(f"""[environments.bench]
storage = "file://{storage}"
{compression}[services.pg_mixed]
postgres = {{ url = "{PG_URL}", schema = "bench_mixed" }}
[services.pg_full]
postgres = {{ url = "{PG_URL}", schema = "bench" }}
[services.pg_small]
postgres = {{ url = "{PG_URL}", schema = "bench_small" }}
[services.mongo]
mongodb = {{ url = "{MONGO_URL}", database = "bench" }}
[services.pg_full_restore]
postgres = {{ url = "{db_url('bench_restore')}", schema = "bench" }}

[environments.bench.masking]
key_env = "VALERO_BENCH_MASK_KEY"
[environments.bench.masking.services.pg_full_restore.postgres]
"journal_lines.text" = "text"
"customers.name" = "name"
"customers.email" = "email"

[environments.bench_prod]
storage = "file://{storage}"
protected = true
""")


def place_snapshot(storage, snap, env):
    """Copies pg_full's snapshot to service pg_full_restore of `env` (a
    manifest must name the environment and service whose folder it is in)."""
    src = os.path.join(storage, "bench", "pg_full", snap)
    dst = os.path.join(storage, env, "pg_full_restore", snap)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copytree(src, dst, dirs_exist_ok=True)
    mpath = os.path.join(dst, "manifest.json")
    with open(mpath) as f:
        manifest = json.load(f)
    manifest["service"] = "pg_full_restore"
    manifest["environment"] = env
    with open(mpath, "w") as f:
        json.dump(manifest, f, indent=2)


def newest_snapshot(cfg, service):
    out = subprocess.run([BIN, "--config", cfg, "-e", "bench", "-s", service, "snapshots", "list", "--output", "json"],
                         capture_output=True, text=True, check=True).stdout
    snaps = json.loads(out)["snapshots"]
    return snaps[-1]["id"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--mongo-docs", type=int, default=200_000)
    ap.add_argument("--postgres-only", action="store_true", help="skip the MongoDB measurements")
    ap.add_argument("--levels", help="instead: compare zstd levels (e.g. 1,3,6,9) on both PostgreSQL data sets")
    ap.add_argument("--restore-points", action="store_true",
                    help="instead: time before the first migration statement, restore point vs full snapshot, at full and 1/4 size")
    args = ap.parse_args()
    if args.levels:
        return levels(args)
    if args.restore_points:
        return restore_points(args)

    print("building valero-db (release) ...", file=sys.stderr)
    sh(["cargo", "build", "--release", "--quiet"], quiet=False)
    build_pg("bench", args.scale)
    build_pg("bench_small", args.scale / 4)
    build_mixed("bench_mixed", args.scale)
    if not args.postgres_only:
        build_mongo(args.mongo_docs)
    size_full = int(psql(PG_URL, "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'bench' AND c.relkind = 'r'"))
    size_data = int(psql(PG_URL, "SELECT sum(pg_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'bench' AND c.relkind = 'r'"))
    size_small = int(psql(PG_URL, "SELECT sum(pg_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'bench_small' AND c.relkind = 'r'"))
    tables = psql(PG_URL, "SELECT string_agg(relname, ' ') FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'bench' AND relkind = 'r'").split()

    work = tempfile.mkdtemp(prefix="valero-bench-")
    storage = os.path.join(work, "store")
    cfg = os.path.join(work, "valero-db.toml")
    config(cfg, storage)
    env = dict(os.environ)
    pw = env.get("PGPASSWORD")
    results = {}

    def record(name, wall, rss, size=None):
        print(f"  {name}: {wall:.2f}s, {rss:.0f} MiB" + (f", {size / 2**20:.1f} MiB stored" if size else ""), file=sys.stderr, flush=True)
        results.setdefault(name, {"wall": [], "rss": [], "size": None})
        results[name]["wall"].append(wall)
        results[name]["rss"].append(rss)
        if size is not None:
            results[name]["size"] = size

    vdb = [BIN, "--config", cfg, "-e", "bench", "--no-progress", "-q"]
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
        shutil.rmtree(storage, ignore_errors=True)
        w, m = timed(vdb + ["-s", "pg_full", "snapshot"])
        record("valero-db snapshot", w, m, du(storage))
        before = du(storage)
        w, m = timed(vdb + ["-s", "pg_small", "snapshot"])
        record("valero-db snapshot (1/4 size)", w, m, du(storage) - before)
        out = os.path.join(work, "dump.fc")
        w, m = timed([f"{PG_BIN}/pg_dump", "-Fc", "-n", "bench", "-f", out, PG_URL])
        record("pg_dump -Fc", w, m, du(out))
        outd = os.path.join(work, "dump.dir")
        shutil.rmtree(outd, ignore_errors=True)
        w, m = timed([f"{PG_BIN}/pg_dump", "-Fd", "-j2", "-n", "bench", "-f", outd, PG_URL])
        record("pg_dump -Fd -j2", w, m, du(outd))
        before = du(storage)
        w, m = timed(vdb + ["-s", "pg_mixed", "snapshot"])
        record("valero-db snapshot (mixed data)", w, m, du(storage) - before)
        outm = os.path.join(work, "mixed.fc")
        w, m = timed([f"{PG_BIN}/pg_dump", "-Fc", "-n", "bench_mixed", "-f", outm, PG_URL])
        record("pg_dump -Fc (mixed data)", w, m, du(outm))
        copy = " ".join(f"-c '\\copy bench.{t} TO /dev/null'" for t in tables)
        w, m = timed(["sh", "-c", f"psql '{PG_URL}' -X -q {copy}"])
        record("raw floor: COPY TO /dev/null", w, m)
        # Restores into an empty database.
        for name, cmd in [
            ("valero-db restore", "bench"),
            ("valero-db restore (masked)", "bench_prod"),
            ("pg_restore -j2", [f"{PG_BIN}/pg_restore", "-j2", "-d", db_url("bench_restore"), out]),
        ]:
            psql(PG_URL, "DROP DATABASE IF EXISTS bench_restore")
            psql(PG_URL, "CREATE DATABASE bench_restore")
            if isinstance(cmd, str):
                snap = newest_snapshot(cfg, "pg_full")
                place_snapshot(storage, snap, cmd)
                extra = [] if cmd == "bench" else ["--from-env", cmd]
                w, m = timed(vdb + ["-s", "pg_full_restore", "restore", "--snapshot", snap, "--yes"] + extra,
                             env=dict(os.environ, VALERO_BENCH_MASK_KEY="bench-masking-key-0123456789"))
            else:
                w, m = timed(cmd)
            record(name, w, m)
        if args.postgres_only:
            continue
        before = du(storage)
        w, m = timed(vdb + ["-s", "mongo", "snapshot"])
        record("valero-db snapshot (MongoDB)", w, m, du(storage) - before)
        w, m = timed([VENV_PY, "-c", DRAIN, MONGO_URL])
        record("raw cursor drain (MongoDB)", w, m)
        snap = newest_snapshot(cfg, "mongo")
        w, m = timed(vdb + ["-s", "mongo", "restore", "--snapshot", snap, "--yes"])
        record("valero-db restore (MongoDB)", w, m)
    psql(PG_URL, "DROP DATABASE IF EXISTS bench_restore")
    shutil.rmtree(work, ignore_errors=True)

    med = {k: statistics.median(v["wall"]) for k, v in results.items()}
    ref = {
        "valero-db snapshot": ("pg_dump -Fc", "pg_dump -Fd -j2"),
        "valero-db snapshot (mixed data)": ("pg_dump -Fc (mixed data)",),
        "valero-db restore": ("pg_restore -j2",),
        "valero-db restore (masked)": ("valero-db restore",),
        "valero-db snapshot (MongoDB)": ("raw cursor drain (MongoDB)",),
    }
    print()
    print(f"PostgreSQL schema: {size_data / 2**20:.0f} MiB of table data ({size_full / 2**20:.0f} MiB with indexes and TOAST); "
          f"small copy {size_small / 2**20:.0f} MiB; MongoDB: {args.mongo_docs} orders + 20000 customers; "
          f"{args.rounds} rounds, median; {os.cpu_count()} cores")
    print(f"{'what':<34} {'wall s':>8} {'ratio':>24} {'stored MiB':>11} {'peak RSS MiB':>13}")
    for name, v in results.items():
        ratio = ""
        for other in ref.get(name, ()):
            ratio += f"{med[name] / med[other]:.2f}x {other.split()[0] if 'MongoDB' not in other else 'drain'}"
            ratio += f"{'' if other.endswith('Fc') or 'MongoDB' in other or 'restore' in other else ''}  "
        size = f"{v['size'] / 2**20:.1f}" if v["size"] is not None else "-"
        print(f"{name:<34} {med[name]:>8.2f} {ratio.strip():>24} {size:>11} {max(v['rss']):>13.0f}")
    fc = results["pg_dump -Fc"]["size"]
    print()
    print(f"targets: snapshot <= 0.5x pg_dump -Fc: {med['valero-db snapshot'] / med['pg_dump -Fc']:.2f}x; "
          f"<= 0.7x pg_dump -Fd -j2: {med['valero-db snapshot'] / med['pg_dump -Fd -j2']:.2f}x; "
          f"restore <= 1.0x pg_restore -j2: {med['valero-db restore'] / med['pg_restore -j2']:.2f}x; "
          f"masked restore <= 1.3x restore: {med['valero-db restore (masked)'] / med['valero-db restore']:.2f}x; "
          f"peak RSS <= 128 MiB: {max(max(v['rss']) for k, v in results.items() if k.startswith('valero-db')):.0f} MiB; "
          f"stored <= 0.85x pg_dump -Fc: {results['valero-db snapshot']['size'] / fc:.2f}x, mixed data "
          f"{results['valero-db snapshot (mixed data)']['size'] / results['pg_dump -Fc (mixed data)']['size']:.2f}x "
          f"(time {med['valero-db snapshot (mixed data)'] / med['pg_dump -Fc (mixed data)']:.2f}x)"
          + ("" if args.postgres_only else
             f"; MongoDB snapshot <= 1.3x drain: {med['valero-db snapshot (MongoDB)'] / med['raw cursor drain (MongoDB)']:.2f}x"))


def copy_rows_zstd(schema, level):
    """Stored bytes of the schema's COPY text compressed row by row (zstd
    CLI at `level`): what column blocks are measured against."""
    tables = psql(PG_URL, f"SELECT string_agg(relname, ' ') FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                          f"WHERE n.nspname = '{schema}' AND relkind = 'r'").split()
    total = 0
    for t in tables:
        r = subprocess.run(["sh", "-c", f"psql '{PG_URL}' -X -q -c '\\copy {schema}.{t} TO STDOUT' | zstd -q -T2 -{level} | wc -c"],
                           capture_output=True, text=True, check=True)
        total += int(r.stdout.strip())
    return total


def levels(args):
    """zstd levels side by side on both data sets: snapshot time, stored
    size, restore time; pg_dump -Fc and zstd of the row layout as references."""
    print("building valero-db (release) ...", file=sys.stderr)
    sh(["cargo", "build", "--release", "--quiet"], quiet=False)
    build_pg("bench", args.scale)
    build_mixed("bench_mixed", args.scale)
    work = tempfile.mkdtemp(prefix="valero-bench-")
    storage = os.path.join(work, "store")
    cfg = os.path.join(work, "valero-db.toml")
    vdb = [BIN, "--config", cfg, "-e", "bench", "--no-progress", "-q"]
    rows = []
    for service, schema in [("pg_full", "bench"), ("pg_mixed", "bench_mixed")]:
        out = os.path.join(work, "dump.fc")
        w, _ = timed([f"{PG_BIN}/pg_dump", "-Fc", "-n", schema, "-f", out, PG_URL])
        fc_size, fc_wall = du(out), w
        rows.append((schema, "pg_dump -Fc", w, fc_size, None, None))
        rows.append((schema, "zstd -3 of COPY rows", None, copy_rows_zstd(schema, 3), None, None))
        for level in [int(x) for x in args.levels.split(",")]:
            config(cfg, storage, level)
            shutil.rmtree(storage, ignore_errors=True)
            walls, rss = [], 0
            for _ in range(args.rounds):
                shutil.rmtree(storage, ignore_errors=True)
                w, m = timed(vdb + ["-s", service, "snapshot"])
                walls.append(w)
                rss = max(rss, m)
            size = du(storage)
            restore = None
            if service == "pg_full":
                psql(PG_URL, "DROP DATABASE IF EXISTS bench_restore")
                psql(PG_URL, "CREATE DATABASE bench_restore")
                snap = newest_snapshot(cfg, "pg_full")
                src = os.path.join(storage, "bench", "pg_full", snap)
                dst = os.path.join(storage, "bench", "pg_full_restore", snap)
                shutil.copytree(src, dst)
                mpath = os.path.join(dst, "manifest.json")
                manifest = json.load(open(mpath))
                manifest["service"] = "pg_full_restore"
                json.dump(manifest, open(mpath, "w"))
                restore, _ = timed(vdb + ["-s", "pg_full_restore", "restore", "--snapshot", snap, "--yes"])
            wall = statistics.median(walls)
            rows.append((schema, f"valero-db level {level}", wall, size, restore, rss))
            print(f"  {schema} level {level}: {wall:.2f}s ({wall / fc_wall:.2f}x pg_dump -Fc), "
                  f"{size / fc_size:.2f}x pg_dump -Fc stored", file=sys.stderr, flush=True)
    psql(PG_URL, "DROP DATABASE IF EXISTS bench_restore")
    shutil.rmtree(work, ignore_errors=True)
    print()
    print(f"zstd levels, {args.rounds} round(s) each, median; {os.cpu_count()} cores")
    print(f"{'data':<12} {'what':<22} {'wall s':>7} {'x pg_dump':>9} {'stored MiB':>11} {'x pg_dump':>9} {'restore s':>10} {'RSS MiB':>8}")
    ref = {}
    for schema, what, wall, size, restore, rss in rows:
        if what == "pg_dump -Fc":
            ref[schema] = (wall, size)
        fw, fs = ref[schema]
        print(f"{schema:<12} {what:<22} {wall if wall else float('nan'):>7.2f} {(wall / fw) if wall else float('nan'):>9.2f} "
              f"{size / 2**20:>11.1f} {size / fs:>9.2f} {restore if restore else float('nan'):>10.2f} {rss if rss else float('nan'):>8.0f}")


RP_CONFIG = """[environments.bench]
storage = "file://{storage}"
[environments.nocapture]
storage = "file://{storage}"
[services.{service}]
postgres = {{ url = "{url}", schema = "{schema}" }}
"""


CHANGED = 3000


def changed_rows(schema, n):
    """A few thousand rows changed since the last snapshot (captured by
    the restore point's flush)."""
    psql(PG_URL, f"UPDATE {schema}.journal_lines SET credit = credit + 1 WHERE id BETWEEN {n * CHANGED + 1} AND {(n + 1) * CHANGED}")


def before_first_statement(vdb, env, schema, version, migrations, service):
    """Runs migrate with one new trivial migration; returns the seconds
    from the start of the process to the migration's transaction (its
    history row's applied_at, the transaction's start) and the report."""
    d = os.path.join(migrations, service, "postgres")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"{version:04d}_rp_bench.up.sql"), "w") as f:
        f.write(f"CREATE TABLE rp_bench_{version} (v int);\n")
    start = time.time()
    out = subprocess.run(vdb + ["-e", env, "migrate", "--output", "json"], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"migrate failed: {out.stderr[-3000:]}")
    applied = float(psql(PG_URL, f"SELECT extract(epoch FROM applied_at) FROM {schema}.valero_schema_history WHERE version = {version}"))
    return applied - start, json.loads(out.stdout)


def clean_rp_bench(vdb, schema):
    subprocess.run(vdb + ["-e", "bench", "capture", "--drop", "--yes"], capture_output=True)
    tables = psql(PG_URL, f"SELECT string_agg(quote_ident(relname), ',') FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                          f"WHERE n.nspname = '{schema}' AND (relname LIKE 'rp_bench_%' OR relname = 'valero_schema_history') AND relkind = 'r'")
    if tables:
        psql(PG_URL, "DROP TABLE " + ", ".join(f"{schema}.{t}" for t in tables.split(",")))


def restore_points(args):
    """Time before the first migration statement: restore point (capture
    set up, a few thousand rows changed since the last snapshot) against a
    full pre-migrate snapshot, at full and one-quarter size, one run."""
    print("building valero-db (release) ...", file=sys.stderr)
    sh(["cargo", "build", "--release", "--quiet"], quiet=False)
    build_pg("bench", args.scale)
    build_pg("bench_small", args.scale / 4)
    for schema in ("bench", "bench_small"):
        sh(["psql", PG_URL, "-X", "-q", "-c", f"VACUUM ANALYZE {schema}.journal_lines"])
    rows, restores = [], (float("nan"), float("nan"))
    for schema, label in [("bench", "full"), ("bench_small", "1/4")]:
        work = tempfile.mkdtemp(prefix="valero-bench-rp-")
        storage, migrations = os.path.join(work, "store"), os.path.join(work, "migrations")
        cfg = os.path.join(work, "valero-db.toml")
        service = "rp"
        with open(cfg, "w") as f:
            f.write(RP_CONFIG.format(storage=storage, migrations=migrations, service=service, url=PG_URL, schema=schema))
        vdb = [BIN, "--config", cfg, "--no-progress", "-q"]
        clean_rp_bench(vdb, schema)
        size = int(psql(PG_URL, f"SELECT sum(pg_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = '{schema}' AND c.relkind = 'r'"))
        version = 1
        before_first_statement(vdb, "nocapture", schema, version, migrations, service)
        sh(vdb + ["-e", "bench", "capture", "--once"])
        sh(vdb + ["-e", "bench", "snapshot"])
        point, full, flushed = [], [], []
        for r in range(args.rounds):
            changed_rows(schema, r)
            version += 1
            secs, doc = before_first_statement(vdb, "bench", schema, version, migrations, service)
            if len(doc["restore_points"]) != 1:
                sys.exit(f"no restore point was taken: {doc['no_restore_point']}")
            point.append(secs)
            flushed.append(doc["restore_points"][0]["duration_ms"] / 1000)
            version += 1
            secs, doc = before_first_statement(vdb, "nocapture", schema, version, migrations, service)
            if len(doc["snapshots"]) != 1:
                sys.exit("no full snapshot was taken")
            full.append(secs)
            # The next round's restore point needs a snapshot at the versions now.
            sh(vdb + ["-e", "bench", "snapshot"])
            print(f"  {label}: restore point {point[-1]:.2f}s (the point itself {flushed[-1]:.2f}s), full snapshot {full[-1]:.2f}s",
                  file=sys.stderr, flush=True)
        rows.append((label, size, statistics.median(point), statistics.median(flushed), statistics.median(full)))
        if label == "full":
            # The last round's restore point against its base snapshot
            # alone: the point costs the snapshot's restore plus the replay.
            points = json.loads(subprocess.run(vdb + ["-e", "bench", "snapshots", "list", "--output", "json"],
                                               capture_output=True, text=True, check=True).stdout)["restore_points"]
            last = points[-1]
            w_point, _ = timed(vdb + ["-e", "bench", "restore", "--restore-point", last["id"], "--yes"])
            w_base, _ = timed(vdb + ["-e", "bench", "restore", "--snapshot", last["base_snapshot"], "--yes"])
            restores = (w_point, w_base)
        clean_rp_bench(vdb, schema)
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(f"time before the first migration statement (process start to the migration's transaction), "
          f"{args.rounds} rounds, median; {os.cpu_count()} cores; {CHANGED} journal rows changed since the last snapshot")
    print(f"{'size':<6} {'table data MiB':>14} {'restore point s':>16} {'(point alone s)':>16} {'full snapshot s':>16} {'ratio':>7}")
    for label, size, p, f_, full in rows:
        print(f"{label:<6} {size / 2**20:>14.0f} {p:>16.2f} {f_:>16.2f} {full:>16.2f} {p / full:>7.2f}")
    print(f"restore (full size, pre-restore snapshot included): from the restore point {restores[0]:.2f}s, "
          f"from its base snapshot alone {restores[1]:.2f}s ({CHANGED} changed rows replayed)")
    print()
    print("targets: restore point <= 1 s at both sizes and not growing with size; <= 0.25x the full snapshot at full size: "
          f"{rows[0][2]:.2f}s / {rows[1][2]:.2f}s, {rows[0][2] / rows[0][4]:.2f}x")


if __name__ == "__main__":
    main()

/*
 * latency: commit -> claimed latency of outbox under a steady load.
 *
 * P producer connections enqueue events at a fixed total rate (each event in
 * its own autocommitted transaction; the time is taken when the enqueue's
 * COMMIT has returned).  One consumer connection LISTENs on the
 * subscription's channel and, on each notification (or after 1 s without
 * one, as a safety net), claims batches until a claim comes back short,
 * acking each batch before commit:
 *
 *     BEGIN; SELECT event_id, payload->>'seq' FROM outbox.claim(s, batch);
 *     SELECT outbox.ack(s, ids); COMMIT;
 *
 * An event's latency is the time from its producer's COMMIT returning to the
 * consumer's claim returning it (so the consumer's own commit is not
 * counted, the producer's commit is not counted either).  A second figure,
 * "from send", counts from just before the producer sent the enqueue: the
 * payload carries that time in microseconds (sent_us), as well as the
 * event's sequence number.
 *
 * With -r 0 the producers enqueue as fast as they can for -d seconds and the
 * consumer stops when they do: its rate is then the throughput of one
 * consumer under saturation (used for the held-xmin comparison).
 *
 * With -m relay the same is done with the plain-table relay, the ceiling
 * outbox is compared with: the producers INSERT into table -t, the consumer
 * polls (no notifications; 1 ms sleep when a batch comes back short) with
 *
 *     DELETE FROM t WHERE id IN (SELECT id FROM t ORDER BY id LIMIT batch
 *                                FOR UPDATE SKIP LOCKED) RETURNING ...
 *
 * Optionally a sampler connection reads, every -S seconds, the dead tuples
 * and total size of the outbox tables (or of the relay table) from
 * pg_stat_user_tables, for the held-xmin and soak measurements.
 *
 * Connection parameters come from the environment (PGHOST, PGPORT, PGUSER)
 * and -D dbname.  Output: "sample ..." lines while running, then
 * "key=value" lines for bench/run.
 *
 *   latency -D bench -s lat -t lat -r 1000 -d 20 [-p 4] [-b 100] [-S 2]
 *   latency -D bench -m relay -t relay_hx -r 0 -d 8 [-S 2]
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

static const char *dbname = "bench";
static const char *sub = "lat";
static const char *topic = "lat";		/* relay mode: the table */
static int	relay = 0;
static double rate = 1000.0;			/* 0: as fast as possible */
static double duration = 20.0;
static int	nproducers = 4;
static int	batch = 100;
static double sample_every = 0.0;

static int64_t capacity;				/* most events we can record */
static int64_t *commit_ns;				/* per seq: producer's COMMIT returned */
static int64_t *send_ns;				/* per seq: just before the producer sent it */
static int64_t *claim_ns;				/* per seq: the consumer's claim returned it */
static int64_t start_ns;
static int64_t end_ns;					/* end of the producing window */
static atomic_int producers_done;
static atomic_int stop_sampler;
static atomic_llong next_seq;
static atomic_llong produced_total;

static int64_t
now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t) ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t
wall_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void
sleep_until(int64_t t)
{
	struct timespec ts;

	ts.tv_sec = t / 1000000000;
	ts.tv_nsec = t % 1000000000;
	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
		;
}

static PGconn *
connect_db(const char *appname)
{
	const char *keys[] = {"dbname", "application_name", NULL};
	const char *vals[] = {dbname, appname, NULL};
	PGconn	   *c = PQconnectdbParams(keys, vals, 1);

	if (PQstatus(c) != CONNECTION_OK)
	{
		fprintf(stderr, "latency: connection failed: %s", PQerrorMessage(c));
		exit(1);
	}
	return c;
}

static PGresult *
exec_ok(PGconn *c, const char *sql)
{
	PGresult   *r = PQexec(c, sql);

	if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK)
	{
		fprintf(stderr, "latency: \"%s\" failed: %s", sql, PQerrorMessage(c));
		exit(1);
	}
	return r;
}

static void *
producer(void *arg)
{
	int			me = (int) (intptr_t) arg;
	PGconn	   *c = connect_db("bench_latency_producer");
	PGresult   *r;
	char		payload[512];
	char		seqbuf[32];
	char		sql[256];
	int64_t		k = 0;
	int64_t		n = 0;
	const char *pad = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod "
		"tempor incididunt ut labore et dolore magna aliqua ut enim ad minim veniam";

	if (relay)
		snprintf(sql, sizeof(sql),
				 "INSERT INTO %s (topic, key, payload, created_at) "
				 "VALUES ($1, $3, $2::jsonb, now())", topic);
	else
		snprintf(sql, sizeof(sql), "SELECT outbox.enqueue($1, $2::jsonb, key => $3)");
	r = PQprepare(c, "enq", sql, 3, NULL);
	if (PQresultStatus(r) != PGRES_COMMAND_OK)
	{
		fprintf(stderr, "latency: prepare failed: %s", PQerrorMessage(c));
		exit(1);
	}
	PQclear(r);

	for (;;)
	{
		int64_t		seq;
		const char *params[3];

		if (rate > 0)
		{
			/* producers are staggered so that the total is evenly spaced */
			int64_t		due;

			seq = k * nproducers + me;
			if (seq >= capacity)
				break;
			due = start_ns + (int64_t) ((double) seq * 1e9 / rate);
			if (now_ns() < due)
				sleep_until(due);
		}
		else
		{
			if (now_ns() >= end_ns)
				break;
			seq = atomic_fetch_add(&next_seq, 1);
			if (seq >= capacity)
				break;
			if (k == 0 && now_ns() < start_ns)
				sleep_until(start_ns);
		}
		send_ns[seq] = now_ns();
		snprintf(payload, sizeof(payload),
				 "{\"seq\": %" PRId64 ", \"sent_us\": %" PRId64 ", \"note\": \"%s\"}",
				 seq, wall_us(), pad);
		snprintf(seqbuf, sizeof(seqbuf), "%" PRId64, seq);
		params[0] = relay ? "hx" : topic;
		params[1] = payload;
		params[2] = seqbuf;
		r = PQexecPrepared(c, "enq", 3, params, NULL, NULL, 0);
		commit_ns[seq] = now_ns();
		if (PQresultStatus(r) != PGRES_TUPLES_OK && PQresultStatus(r) != PGRES_COMMAND_OK)
		{
			fprintf(stderr, "latency: enqueue failed: %s", PQerrorMessage(c));
			exit(1);
		}
		PQclear(r);
		k++;
		n++;
	}
	atomic_fetch_add(&produced_total, n);
	PQfinish(c);
	return NULL;
}

static int64_t consumed, claims, empty_claims, wakeups_notify, wakeups_timeout;
static int64_t last_claim_ns;

/* one claim (+ ack, commit); returns how many events it got */
static int
claim_once(PGconn *c, char *ids)
{
	PGresult   *r;
	int64_t		t;
	int			got;
	size_t		len = 0;
	char		sql[512];

	if (relay)
		snprintf(sql, sizeof(sql),
				 "DELETE FROM %s WHERE id IN (SELECT id FROM %s ORDER BY id LIMIT %d "
				 "FOR UPDATE SKIP LOCKED) RETURNING id, payload->>'seq'",
				 topic, topic, batch);
	else
		snprintf(sql, sizeof(sql),
				 "BEGIN; SELECT event_id, payload->>'seq' FROM outbox.claim('%s', %d)",
				 sub, batch);
	r = PQexec(c, sql);
	t = now_ns();
	if (PQresultStatus(r) != PGRES_TUPLES_OK)
	{
		fprintf(stderr, "latency: claim failed: %s", PQerrorMessage(c));
		exit(1);
	}
	got = PQntuples(r);
	claims++;
	if (got == 0)
		empty_claims++;
	ids[len++] = '{';
	for (int i = 0; i < got; i++)
	{
		int64_t		seq = strtoll(PQgetvalue(r, i, 1), NULL, 10);

		if (seq >= 0 && seq < capacity && claim_ns[seq] == 0)
		{
			claim_ns[seq] = t;
			consumed++;
			if (t > last_claim_ns)
				last_claim_ns = t;
		}
		len += (size_t) snprintf(ids + len, 24, "%s%s", i ? "," : "",
								 PQgetvalue(r, i, 0));
	}
	ids[len++] = '}';
	ids[len] = '\0';
	PQclear(r);
	if (!relay)
	{
		const char *params[2] = {sub, ids};
		PGresult   *a = PQexecParams(c, "SELECT outbox.ack($1, $2::bigint[])", 2, NULL,
									 params, NULL, NULL, 0);

		if (PQresultStatus(a) != PGRES_TUPLES_OK)
		{
			fprintf(stderr, "latency: ack failed: %s", PQerrorMessage(c));
			exit(1);
		}
		PQclear(a);
		PQclear(exec_ok(c, "COMMIT"));
	}
	return got;
}

/* wait for a notification on c, at most timeout_ms; returns whether one came */
static int
wait_notify(PGconn *c, int timeout_ms)
{
	PGnotify   *n;
	int			any = 0;

	PQconsumeInput(c);
	while ((n = PQnotifies(c)) != NULL)
	{
		any = 1;
		PQfreemem(n);
	}
	if (!any)
	{
		fd_set		fds;
		struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
		int			sock = PQsocket(c);

		FD_ZERO(&fds);
		FD_SET(sock, &fds);
		if (select(sock + 1, &fds, NULL, NULL, &tv) > 0)
		{
			PQconsumeInput(c);
			while ((n = PQnotifies(c)) != NULL)
			{
				any = 1;
				PQfreemem(n);
			}
		}
	}
	return any;
}

static void *
consumer(void *arg)
{
	PGconn	   *c = (PGconn *) arg;
	char	   *ids = malloc((size_t) batch * 24 + 16);
	int64_t		deadline = start_ns + (int64_t) ((duration + 15.0) * 1e9);

	for (;;)
	{
		int			got;

		/* claim until a claim comes back short */
		do
		{
			got = claim_once(c, ids);
		} while (got == batch);

		if (atomic_load(&producers_done))
		{
			/* steady load: until everything is consumed; saturation: stop */
			if (rate <= 0 || consumed >= atomic_load(&produced_total))
				break;
		}
		if (now_ns() > deadline)
			break;

		if (relay)
		{
			/* a relay polls */
			struct timespec ts = {0, 1000000};

			nanosleep(&ts, NULL);
		}
		else if (wait_notify(c, 1000))
			wakeups_notify++;
		else
			wakeups_timeout++;
	}
	free(ids);
	return NULL;
}

static void
sample(PGconn *c)
{
	char		sql[512];
	PGresult   *r;

	if (relay)
		snprintf(sql, sizeof(sql),
				 "SELECT coalesce(sum(n_dead_tup), 0), coalesce(sum(n_live_tup), 0), "
				 "coalesce(sum(pg_total_relation_size(relid)), 0) "
				 "FROM pg_stat_user_tables WHERE relname = '%s'", topic);
	else
		snprintf(sql, sizeof(sql),
				 "SELECT coalesce(sum(n_dead_tup), 0), coalesce(sum(n_live_tup), 0), "
				 "coalesce(sum(pg_total_relation_size(relid)), 0) "
				 "FROM pg_stat_user_tables WHERE schemaname = 'outbox'");
	r = exec_ok(c, sql);
	printf("sample t=%.1f dead=%s live=%s bytes=%s\n",
		   (double) (now_ns() - start_ns) / 1e9,
		   PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 1), PQgetvalue(r, 0, 2));
	fflush(stdout);
	PQclear(r);
}

static void *
sampler(void *arg)
{
	PGconn	   *c = (PGconn *) arg;
	int64_t		next = start_ns;

	while (!atomic_load(&stop_sampler))
	{
		sleep_until(next);
		if (atomic_load(&stop_sampler))
			break;
		sample(c);
		next += (int64_t) (sample_every * 1e9);
	}
	return NULL;
}

static int
cmp64(const void *a, const void *b)
{
	int64_t		x = *(const int64_t *) a,
				y = *(const int64_t *) b;

	return (x > y) - (x < y);
}

static double
pct(int64_t *v, int64_t n, double p)
{
	int64_t		i;

	if (n == 0)
		return -1;
	i = (int64_t) (p * (double) n + 0.999999) - 1;
	if (i < 0)
		i = 0;
	if (i >= n)
		i = n - 1;
	return (double) v[i] / 1e6;
}

int
main(int argc, char **argv)
{
	int			opt;
	pthread_t  *prod;
	pthread_t	cons,
				samp;
	PGconn	   *cc,
			   *sc = NULL;
	int64_t    *lat,
			   *lat_send,
				n = 0,
				negative = 0,
				produced;
	int64_t		end_produce;

	while ((opt = getopt(argc, argv, "D:s:t:m:r:d:p:b:S:")) != -1)
	{
		switch (opt)
		{
			case 'D': dbname = optarg; break;
			case 's': sub = optarg; break;
			case 't': topic = optarg; break;
			case 'm': relay = strcmp(optarg, "relay") == 0; break;
			case 'r': rate = atof(optarg); break;
			case 'd': duration = atof(optarg); break;
			case 'p': nproducers = atoi(optarg); break;
			case 'b': batch = atoi(optarg); break;
			case 'S': sample_every = atof(optarg); break;
			default:
				fprintf(stderr, "usage: latency -D db [-m outbox|relay] -s sub -t topic|table "
						"-r rate|0 -d seconds [-p producers] [-b batch] [-S sample_seconds]\n");
				return 2;
		}
	}
	if (rate < 0 || duration <= 0 || nproducers < 1 || batch < 1 || batch > 10000)
	{
		fprintf(stderr, "latency: bad arguments\n");
		return 2;
	}
	capacity = rate > 0 ? (int64_t) (rate * duration) : (int64_t) (100000.0 * duration);
	commit_ns = calloc((size_t) capacity, sizeof(int64_t));
	send_ns = calloc((size_t) capacity, sizeof(int64_t));
	claim_ns = calloc((size_t) capacity, sizeof(int64_t));
	if (!commit_ns || !send_ns || !claim_ns)
	{
		fprintf(stderr, "latency: out of memory\n");
		return 1;
	}

	cc = connect_db("bench_latency_consumer");
	if (!relay)
	{
		PGresult   *r;
		const char *params[1] = {sub};
		char	   *quoted;
		char		sql[256];

		r = PQexecParams(cc, "SELECT outbox.channel($1)", 1, NULL, params, NULL, NULL, 0);
		if (PQresultStatus(r) != PGRES_TUPLES_OK)
		{
			fprintf(stderr, "latency: channel failed: %s", PQerrorMessage(cc));
			return 1;
		}
		quoted = PQescapeIdentifier(cc, PQgetvalue(r, 0, 0), strlen(PQgetvalue(r, 0, 0)));
		snprintf(sql, sizeof(sql), "LISTEN %s", quoted);
		PQfreemem(quoted);
		PQclear(r);
		PQclear(exec_ok(cc, sql));
	}
	if (sample_every > 0)
		sc = connect_db("bench_latency_sampler");

	/* producers connect first; the schedule starts a little later */
	prod = calloc((size_t) nproducers, sizeof(pthread_t));
	start_ns = now_ns() + 300 * 1000000LL;
	end_ns = start_ns + (int64_t) (duration * 1e9);
	for (int i = 0; i < nproducers; i++)
		pthread_create(&prod[i], NULL, producer, (void *) (intptr_t) i);
	pthread_create(&cons, NULL, consumer, cc);
	if (sc)
		pthread_create(&samp, NULL, sampler, sc);
	for (int i = 0; i < nproducers; i++)
		pthread_join(prod[i], NULL);
	end_produce = now_ns();
	atomic_store(&producers_done, 1);
	pthread_join(cons, NULL);
	atomic_store(&stop_sampler, 1);
	if (sc)
	{
		pthread_join(samp, NULL);
		sample(sc);				/* the state at the end */
	}
	produced = atomic_load(&produced_total);

	lat = malloc((size_t) capacity * sizeof(int64_t));
	lat_send = malloc((size_t) capacity * sizeof(int64_t));
	for (int64_t i = 0; i < capacity; i++)
	{
		int64_t		d;

		if (claim_ns[i] == 0 || commit_ns[i] == 0)
			continue;
		d = claim_ns[i] - commit_ns[i];
		/* claimed before the producer saw its COMMIT return: 0 */
		if (d < 0)
		{
			negative++;
			d = 0;
		}
		lat[n] = d;
		lat_send[n] = claim_ns[i] - send_ns[i];
		n++;
	}
	qsort(lat, (size_t) n, sizeof(int64_t), cmp64);
	qsort(lat_send, (size_t) n, sizeof(int64_t), cmp64);
	printf("produced=%" PRId64 "\n", produced);
	printf("consumed=%" PRId64 "\n", n);
	printf("left=%" PRId64 "\n", produced - n);
	printf("produce_seconds=%.3f\n", (double) (end_produce - start_ns) / 1e9);
	printf("produce_rate=%.1f\n", (double) produced * 1e9 / (double) (end_produce - start_ns));
	/* saturation: consumed over the producing window; steady: until the last claim */
	printf("consume_rate=%.1f\n",
		   n == 0 ? 0.0 : (double) n * 1e9 /
		   (double) ((rate > 0 ? last_claim_ns : end_produce) - start_ns));
	printf("claims=%" PRId64 "\n", claims);
	printf("empty_claims=%" PRId64 "\n", empty_claims);
	printf("wakeups_notify=%" PRId64 "\n", wakeups_notify);
	printf("wakeups_timeout=%" PRId64 "\n", wakeups_timeout);
	printf("claimed_before_commit_returned=%" PRId64 "\n", negative);
	printf("p50_ms=%.3f\n", pct(lat, n, 0.50));
	printf("p90_ms=%.3f\n", pct(lat, n, 0.90));
	printf("p99_ms=%.3f\n", pct(lat, n, 0.99));
	printf("max_ms=%.3f\n", n ? (double) lat[n - 1] / 1e6 : -1.0);
	printf("send_p50_ms=%.3f\n", pct(lat_send, n, 0.50));
	printf("send_p99_ms=%.3f\n", pct(lat_send, n, 0.99));
	printf("send_max_ms=%.3f\n", n ? (double) lat_send[n - 1] / 1e6 : -1.0);
	PQfinish(cc);
	if (sc)
		PQfinish(sc);
	return 0;
}

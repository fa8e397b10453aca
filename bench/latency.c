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
 * With -m wait the consumer does not LISTEN: each claim waits for events
 * on the server, claim(s, batch, wait => '1s') (contract 1.1, for
 * consumers behind PgBouncer), and the consumer claims again as soon as a
 * claim returns.  Latency is counted as above, to the waiting claim's
 * return.
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
 * With -n N (the scale benchmark of issue 9, bench/scale.sh) there are N
 * subscriptions and N topics, -s and -t giving their prefixes: subscription
 * <s>_i reads topic <t>_i (i = 1 .. N, created beforehand).  The producers
 * rotate over the topics, event seq going to topic seq % N + 1, so the total
 * rate is spread evenly.  -c C consumer connections (default 1) share the
 * subscriptions (i % C); each LISTENs on the channels of its own and, on a
 * notification, claims the notified subscription until a claim comes back
 * short; after 1 s without any notification it claims each of its
 * subscriptions once (the safety net).  A few more key=value lines then
 * count notifications and claims that found nothing.  Without -n, one
 * subscription -s reads topic -t, as before.
 *
 * Except for a relay, commit -> notification is reported as well
 * (notify_*): from an event's COMMIT returning to the first notification
 * of its subscription that a listener connection doing nothing else
 * received after the COMMIT was sent (0 if it came before the COMMIT's
 * answer did: the worker may notify before the producer's thread has seen
 * its answer).  It does not depend on how busy the consumers are, commit
 * -> claimed does.  Exact when no two events of one subscription are in
 * flight together (1,000 topics at 1,000 events/s: one event per topic a
 * second); otherwise a notification for the earlier one may count for
 * the later, and the figure errs low (one subscription at 1,000/s).
 *
 * Connection parameters come from the environment (PGHOST, PGPORT, PGUSER)
 * and -D dbname.  Output: "sample ..." lines while running, then
 * "key=value" lines for bench/run.
 *
 *   latency -D bench -s lat -t lat -r 1000 -d 20 [-p 4] [-b 100] [-S 2]
 *   latency -D scale -s s -t t -n 1000 [-c 1] -r 1000 -d 20
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
static int	waiting = 0;		/* -m wait: claim(..., wait) instead of LISTEN */
static double rate = 1000.0;			/* 0: as fast as possible */
static double duration = 20.0;
static int	nproducers = 4;
static int	batch = 100;
static double sample_every = 0.0;
static int	nsubs = 0;					/* -n: 0 = the single subscription -s */
static int	nconsumers = 1;
static int	worker_pid = 0;			/* -W: a process whose CPU time to report */

/*
 * The subscriptions and topics, with -n or not: nsub entries (1 without
 * -n); chan_sorted maps a channel to its subscription for notifications.
 */
static int	nsub;
static char **sub_names;
static char **topic_names;
typedef struct
{
	char	   *channel;
	int			idx;
} ChannelIdx;
static ChannelIdx *chan_sorted;

static int64_t capacity;				/* most events we can record */
static int64_t *commit_ns;				/* per seq: producer's COMMIT returned */
static int64_t *send_ns;				/* per seq: just before the producer sent it */
static int64_t *claim_ns;				/* per seq: the consumer's claim returned it */

/*
 * Per subscription, when its notifications arrived (in order: one consumer
 * thread takes a subscription's notifications).  Commit -> notification of
 * an event: from its COMMIT returning to the first notification of its
 * subscription that arrived after that.  A notification that arrives
 * before the producer has seen its COMMIT return is not counted for it, so
 * the figure errs high, never low.
 */
typedef struct
{
	int64_t    *at;
	int64_t		n,
				cap;
} Arrivals;
static Arrivals *arrivals;
static int64_t start_ns;
static int64_t end_ns;					/* end of the producing window */
static atomic_int producers_done;
static atomic_int stop_sampler;
static atomic_llong next_seq;
static atomic_llong produced_total;
static atomic_llong consumed_total;

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
		params[0] = relay ? "hx" : topic_names[seq % nsub];
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

/* one consumer connection, its subscriptions and its counts */
typedef struct
{
	PGconn	   *conn;
	int			nmine;
	int		   *mine;			/* subscription indexes it claims */
	char	   *pending;		/* per subscription, not yet claimed: 1 to look,
								 * 2 notified */
	int		   *queue;			/* ring of pending subscriptions, in order */
	int			qhead,
				qlen;
	int64_t		consumed,
				claims,
				empty_claims,
				notified_empty,	/* a notified subscription's first claim got nothing */
				notifications,	/* notifications received (before coalescing) */
				unknown_notifications,
				wakeups_notify,
				wakeups_timeout,
				busy_ns,		/* time spent in claims (claim, ack, commit) */
				last_claim_ns;
} Consumer;

static Consumer *consumers;

/* one claim (+ ack, commit) of subscription i; returns how many events it got */
static int
claim_once(Consumer *k, int i, char *ids)
{
	PGconn	   *c = k->conn;
	PGresult   *r;
	int64_t		t0,
				t;
	int			got;
	size_t		len = 0;
	char		sql[512];

	if (relay)
		snprintf(sql, sizeof(sql),
				 "DELETE FROM %s WHERE id IN (SELECT id FROM %s ORDER BY id LIMIT %d "
				 "FOR UPDATE SKIP LOCKED) RETURNING id, payload->>'seq'",
				 topic, topic, batch);
	else if (waiting)
		snprintf(sql, sizeof(sql),
				 "BEGIN; SELECT event_id, payload->>'seq' FROM outbox.claim('%s', %d, wait => '1s')",
				 sub_names[i], batch);
	else
		snprintf(sql, sizeof(sql),
				 "BEGIN; SELECT event_id, payload->>'seq' FROM outbox.claim('%s', %d)",
				 sub_names[i], batch);
	t0 = now_ns();
	r = PQexec(c, sql);
	t = now_ns();
	if (PQresultStatus(r) != PGRES_TUPLES_OK)
	{
		fprintf(stderr, "latency: claim failed: %s", PQerrorMessage(c));
		exit(1);
	}
	got = PQntuples(r);
	k->claims++;
	if (got == 0)
		k->empty_claims++;
	ids[len++] = '{';
	for (int j = 0; j < got; j++)
	{
		int64_t		seq = strtoll(PQgetvalue(r, j, 1), NULL, 10);

		if (seq >= 0 && seq < capacity && claim_ns[seq] == 0)
		{
			claim_ns[seq] = t;
			k->consumed++;
			atomic_fetch_add(&consumed_total, 1);
			if (t > k->last_claim_ns)
				k->last_claim_ns = t;
		}
		len += (size_t) snprintf(ids + len, 24, "%s%s", j ? "," : "",
								 PQgetvalue(r, j, 0));
	}
	ids[len++] = '}';
	ids[len] = '\0';
	PQclear(r);
	if (!relay)
	{
		const char *params[2] = {sub_names[i], ids};
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
	k->busy_ns += now_ns() - t0;
	return got;
}

static int
cmp_channel(const void *a, const void *b)
{
	return strcmp(((const ChannelIdx *) a)->channel, ((const ChannelIdx *) b)->channel);
}

/* mark subscription i pending (once); how: 1 to look, 2 notified */
static void
make_pending(Consumer *k, int i, char how)
{
	if (!k->pending[i])
		k->queue[(k->qhead + k->qlen++) % nsub] = i;
	if (how > k->pending[i])
		k->pending[i] = how;
}

/* the subscription a notification's channel belongs to, or -1 */
static int
sub_of_channel(const char *channel)
{
	ChannelIdx	key = {(char *) channel, 0};
	ChannelIdx *hit = bsearch(&key, chan_sorted, (size_t) nsub, sizeof(ChannelIdx),
							  cmp_channel);

	return hit ? hit->idx : -1;
}

/* take the notifications libpq has read; returns how many */
static int
take_notifies(Consumer *k)
{
	PGnotify   *n;
	int			any = 0;

	while ((n = PQnotifies(k->conn)) != NULL)
	{
		int			i = sub_of_channel(n->relname);

		any++;
		k->notifications++;
		if (i >= 0)
			make_pending(k, i, 2);
		else
			k->unknown_notifications++;
		PQfreemem(n);
	}
	return any;
}

/* wait for a notification on k, at most timeout_ms; returns whether one came */
static int
wait_notify(Consumer *k, int timeout_ms)
{
	int			any;

	PQconsumeInput(k->conn);
	any = take_notifies(k);
	if (!any)
	{
		fd_set		fds;
		struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
		int			sock = PQsocket(k->conn);

		FD_ZERO(&fds);
		FD_SET(sock, &fds);
		if (select(sock + 1, &fds, NULL, NULL, &tv) > 0)
		{
			PQconsumeInput(k->conn);
			any = take_notifies(k);
		}
	}
	return any;
}

/*
 * The listener: a connection of its own that LISTENs on every channel and
 * only notes when each notification arrives, so that commit -> notification
 * does not include the time a busy consumer takes to read its socket.
 */
static atomic_int stop_listener;

static void *
listener(void *arg)
{
	PGconn	   *c = (PGconn *) arg;
	int			sock = PQsocket(c);

	while (!atomic_load(&stop_listener))
	{
		fd_set		fds;
		struct timeval tv = {0, 100000};
		PGnotify   *n;

		FD_ZERO(&fds);
		FD_SET(sock, &fds);
		if (select(sock + 1, &fds, NULL, NULL, &tv) <= 0)
			continue;
		PQconsumeInput(c);
		while ((n = PQnotifies(c)) != NULL)
		{
			int64_t		t = now_ns();
			int			i = sub_of_channel(n->relname);

			if (i >= 0)
			{
				Arrivals   *a = &arrivals[i];

				if (a->n == a->cap)
				{
					a->cap = a->cap ? a->cap * 2 : 64;
					a->at = realloc(a->at, (size_t) a->cap * sizeof(int64_t));
					if (a->at == NULL)
					{
						fprintf(stderr, "latency: out of memory\n");
						exit(1);
					}
				}
				a->at[a->n++] = t;
			}
			PQfreemem(n);
		}
	}
	return NULL;
}

static void *
consumer(void *arg)
{
	Consumer   *k = (Consumer *) arg;
	char	   *ids = malloc((size_t) batch * 24 + 16);
	int64_t		deadline = start_ns + (int64_t) ((duration + 15.0) * 1e9);

	/* the first round claims everything it has */
	for (int j = 0; j < k->nmine; j++)
		make_pending(k, k->mine[j], 1);
	for (;;)
	{
		/* claim each pending subscription until a claim comes back short */
		while (k->qlen > 0)
		{
			int			i = k->queue[k->qhead];
			int			got,
						first = 1,
						notified = k->pending[i] == 2;

			k->qhead = (k->qhead + 1) % nsub;
			k->qlen--;
			k->pending[i] = 0;
			do
			{
				got = claim_once(k, i, ids);
				if (first && got == 0 && notified)
					k->notified_empty++;
				first = 0;
			} while (got == batch);
			/*
			 * Notifications that came in meanwhile join the queue (without -n
			 * the next wait takes them, as before).
			 */
			if (!relay && nsubs > 0)
				take_notifies(k);
		}

		if (atomic_load(&producers_done))
		{
			/* steady load: until everything is consumed; saturation: stop */
			if (rate <= 0 || atomic_load(&consumed_total) >= atomic_load(&produced_total))
				break;
		}
		if (now_ns() > deadline)
			break;

		if (waiting)
		{
			/* the next claim waits on the server */
			for (int j = 0; j < k->nmine; j++)
				make_pending(k, k->mine[j], 1);
		}
		else if (relay)
		{
			/* a relay polls */
			struct timespec ts = {0, 1000000};

			nanosleep(&ts, NULL);
			make_pending(k, 0, 1);
		}
		else if (wait_notify(k, 1000))
			k->wakeups_notify++;
		else
		{
			k->wakeups_timeout++;
			for (int j = 0; j < k->nmine; j++)
				make_pending(k, k->mine[j], 1);
		}
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

/* CPU time (utime + stime) of process pid in clock ticks; -1 if unreadable */
static long long
proc_ticks(int pid)
{
	char		path[64];
	char		buf[1024];
	FILE	   *f;
	size_t		len;
	char	   *p;
	unsigned long utime,
				stime;

	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	if ((f = fopen(path, "r")) == NULL)
		return -1;
	len = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[len] = '\0';
	/* the command name may hold spaces: fields are counted after its ')' */
	if ((p = strrchr(buf, ')')) == NULL ||
		sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu",
			   &utime, &stime) != 2)
		return -1;
	return (long long) (utime + stime);
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
	pthread_t  *cons,
				samp;
	PGconn	   *sc = NULL;
	PGconn	   *lc = NULL;
	pthread_t	lis;
	Consumer	tot = {0};
	int64_t    *lat,
			   *lat_send,
			   *lat_notify,
				n = 0,
				nn = 0,
				notify_missed = 0,
				negative = 0,
				produced;
	int64_t		end_produce;
	long long	worker_t0 = -1,
				worker_t1 = -1;
	int64_t		worker_end = 0;

	while ((opt = getopt(argc, argv, "D:s:t:m:r:d:p:b:S:n:c:W:")) != -1)
	{
		switch (opt)
		{
			case 'D': dbname = optarg; break;
			case 's': sub = optarg; break;
			case 't': topic = optarg; break;
			case 'm':
				relay = strcmp(optarg, "relay") == 0;
				waiting = strcmp(optarg, "wait") == 0;
				break;
			case 'r': rate = atof(optarg); break;
			case 'd': duration = atof(optarg); break;
			case 'p': nproducers = atoi(optarg); break;
			case 'b': batch = atoi(optarg); break;
			case 'S': sample_every = atof(optarg); break;
			case 'n': nsubs = atoi(optarg); break;
			case 'c': nconsumers = atoi(optarg); break;
			case 'W': worker_pid = atoi(optarg); break;
			default:
				fprintf(stderr, "usage: latency -D db [-m outbox|wait|relay] -s sub -t topic|table "
						"-r rate|0 -d seconds [-p producers] [-b batch] [-S sample_seconds] "
						"[-n subscriptions [-c consumers]] [-W worker_pid]\n");
				return 2;
		}
	}
	if (rate < 0 || duration <= 0 || nproducers < 1 || batch < 1 || batch > 10000 ||
		nsubs < 0 || nconsumers < 1 || (nconsumers > 1 && nsubs < nconsumers) ||
		(relay && nsubs > 0))
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

	/* the subscriptions and topics */
	nsub = nsubs > 0 ? nsubs : 1;
	arrivals = calloc((size_t) nsub, sizeof(Arrivals));
	sub_names = calloc((size_t) nsub, sizeof(char *));
	topic_names = calloc((size_t) nsub, sizeof(char *));
	chan_sorted = calloc((size_t) nsub, sizeof(ChannelIdx));
	for (int i = 0; i < nsub; i++)
	{
		if (nsubs > 0)
		{
			size_t		sl = strlen(sub) + 16,
						tl = strlen(topic) + 16;

			sub_names[i] = malloc(sl);
			topic_names[i] = malloc(tl);
			snprintf(sub_names[i], sl, "%s_%d", sub, i + 1);
			snprintf(topic_names[i], tl, "%s_%d", topic, i + 1);
		}
		else
		{
			sub_names[i] = (char *) sub;
			topic_names[i] = (char *) topic;
		}
	}

	/* the consumers: subscription i belongs to consumer i % nconsumers */
	consumers = calloc((size_t) nconsumers, sizeof(Consumer));
	for (int j = 0; j < nconsumers; j++)
	{
		Consumer   *k = &consumers[j];

		k->conn = connect_db("bench_latency_consumer");
		k->mine = calloc((size_t) nsub, sizeof(int));
		k->pending = calloc((size_t) nsub, 1);
		k->queue = calloc((size_t) nsub, sizeof(int));
	}
	for (int i = 0; i < nsub; i++)
	{
		Consumer   *k = &consumers[i % nconsumers];

		k->mine[k->nmine++] = i;
	}
	for (int i = 0; i < nsub; i++)
	{
		chan_sorted[i].idx = i;
		chan_sorted[i].channel = strdup(sub_names[i]);	/* relay: unused */
	}
	if (!relay)
	{
		lc = connect_db("bench_latency_listener");
		for (int i = 0; i < nsub; i++)
		{
			Consumer   *k = &consumers[i % nconsumers];
			PGresult   *r;
			const char *params[1] = {sub_names[i]};
			char	   *quoted;
			char		sql[256];

			r = PQexecParams(k->conn, "SELECT outbox.channel($1)", 1, NULL, params,
							 NULL, NULL, 0);
			if (PQresultStatus(r) != PGRES_TUPLES_OK)
			{
				fprintf(stderr, "latency: channel failed: %s", PQerrorMessage(k->conn));
				return 1;
			}
			free(chan_sorted[i].channel);
			chan_sorted[i].channel = strdup(PQgetvalue(r, 0, 0));
			quoted = PQescapeIdentifier(k->conn, PQgetvalue(r, 0, 0),
										strlen(PQgetvalue(r, 0, 0)));
			snprintf(sql, sizeof(sql), "LISTEN %s", quoted);
			PQfreemem(quoted);
			PQclear(r);
			if (!waiting)
				PQclear(exec_ok(k->conn, sql));
			PQclear(exec_ok(lc, sql));
		}
	}
	qsort(chan_sorted, (size_t) nsub, sizeof(ChannelIdx), cmp_channel);
	if (sample_every > 0)
		sc = connect_db("bench_latency_sampler");

	/* producers connect first; the schedule starts a little later */
	prod = calloc((size_t) nproducers, sizeof(pthread_t));
	start_ns = now_ns() + 300 * 1000000LL;
	end_ns = start_ns + (int64_t) (duration * 1e9);
	for (int i = 0; i < nproducers; i++)
		pthread_create(&prod[i], NULL, producer, (void *) (intptr_t) i);
	cons = calloc((size_t) nconsumers, sizeof(pthread_t));
	for (int j = 0; j < nconsumers; j++)
		pthread_create(&cons[j], NULL, consumer, &consumers[j]);
	if (sc)
		pthread_create(&samp, NULL, sampler, sc);
	if (lc)
		pthread_create(&lis, NULL, listener, lc);
	if (worker_pid > 0)
	{
		/* the worker's CPU over the window from the schedule's start ... */
		sleep_until(start_ns);
		worker_t0 = proc_ticks(worker_pid);
	}
	for (int i = 0; i < nproducers; i++)
		pthread_join(prod[i], NULL);
	end_produce = now_ns();
	atomic_store(&producers_done, 1);
	for (int j = 0; j < nconsumers; j++)
	{
		Consumer   *k = &consumers[j];

		pthread_join(cons[j], NULL);
		tot.claims += k->claims;
		tot.empty_claims += k->empty_claims;
		tot.notified_empty += k->notified_empty;
		tot.notifications += k->notifications;
		tot.unknown_notifications += k->unknown_notifications;
		tot.wakeups_notify += k->wakeups_notify;
		tot.wakeups_timeout += k->wakeups_timeout;
		tot.busy_ns += k->busy_ns;
		if (k->last_claim_ns > tot.last_claim_ns)
			tot.last_claim_ns = k->last_claim_ns;
	}
	/* ... to the last consumer's end */
	if (worker_pid > 0)
	{
		worker_t1 = proc_ticks(worker_pid);
		worker_end = now_ns();
	}
	atomic_store(&stop_sampler, 1);
	atomic_store(&stop_listener, 1);
	if (lc)
		pthread_join(lis, NULL);
	if (sc)
	{
		pthread_join(samp, NULL);
		sample(sc);				/* the state at the end */
	}
	produced = atomic_load(&produced_total);

	lat = malloc((size_t) capacity * sizeof(int64_t));
	lat_send = malloc((size_t) capacity * sizeof(int64_t));
	lat_notify = malloc((size_t) capacity * sizeof(int64_t));
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

	/* commit -> notification (not for a relay, which polls) */
	if (!relay)
	{
		for (int64_t i = 0; i < capacity; i++)
		{
			Arrivals   *a = &arrivals[i % nsub];
			int64_t		lo = 0,
						hi = a->n;

			if (commit_ns[i] == 0)
				continue;
			/* the first arrival after the COMMIT was sent */
			while (lo < hi)
			{
				int64_t		mid = lo + (hi - lo) / 2;

				if (a->at[mid] < send_ns[i])
					lo = mid + 1;
				else
					hi = mid;
			}
			if (lo == a->n)
				notify_missed++;
			else
				lat_notify[nn++] = a->at[lo] > commit_ns[i] ? a->at[lo] - commit_ns[i] : 0;
		}
		qsort(lat_notify, (size_t) nn, sizeof(int64_t), cmp64);
	}
	printf("produced=%" PRId64 "\n", produced);
	printf("consumed=%" PRId64 "\n", n);
	printf("left=%" PRId64 "\n", produced - n);
	printf("produce_seconds=%.3f\n", (double) (end_produce - start_ns) / 1e9);
	printf("produce_rate=%.1f\n", (double) produced * 1e9 / (double) (end_produce - start_ns));
	/* saturation: consumed over the producing window; steady: until the last claim */
	printf("consume_rate=%.1f\n",
		   n == 0 ? 0.0 : (double) n * 1e9 /
		   (double) ((rate > 0 ? tot.last_claim_ns : end_produce) - start_ns));
	printf("claims=%" PRId64 "\n", tot.claims);
	printf("empty_claims=%" PRId64 "\n", tot.empty_claims);
	printf("wakeups_notify=%" PRId64 "\n", tot.wakeups_notify);
	printf("wakeups_timeout=%" PRId64 "\n", tot.wakeups_timeout);
	if (nsubs > 0)
	{
		printf("subscriptions=%d\n", nsubs);
		printf("consumers=%d\n", nconsumers);
		printf("notifications=%" PRId64 "\n", tot.notifications);
		printf("notifications_unknown=%" PRId64 "\n", tot.unknown_notifications);
		printf("notified_empty=%" PRId64 "\n", tot.notified_empty);
		/* the consumers' share of the run spent in claims: near 100, behind */
		printf("consumer_busy_pct=%.1f\n", 100.0 * (double) tot.busy_ns / nconsumers /
			   (double) (tot.last_claim_ns - start_ns));
	}
	if (worker_pid > 0)
	{
		double		secs = (double) (worker_end - start_ns) / 1e9;
		double		cpu = worker_t0 >= 0 && worker_t1 >= 0 ?
			(double) (worker_t1 - worker_t0) / (double) sysconf(_SC_CLK_TCK) : -1.0;

		printf("worker_window_seconds=%.3f\n", secs);
		printf("worker_cpu_seconds=%.3f\n", cpu);
		printf("worker_cpu_pct=%.2f\n", cpu < 0 ? -1.0 : 100.0 * cpu / secs);
	}
	printf("claimed_before_commit_returned=%" PRId64 "\n", negative);
	printf("p50_ms=%.3f\n", pct(lat, n, 0.50));
	printf("p90_ms=%.3f\n", pct(lat, n, 0.90));
	printf("p99_ms=%.3f\n", pct(lat, n, 0.99));
	printf("max_ms=%.3f\n", n ? (double) lat[n - 1] / 1e6 : -1.0);
	printf("send_p50_ms=%.3f\n", pct(lat_send, n, 0.50));
	printf("send_p99_ms=%.3f\n", pct(lat_send, n, 0.99));
	printf("send_max_ms=%.3f\n", n ? (double) lat_send[n - 1] / 1e6 : -1.0);
	if (!relay)
	{
		printf("notify_p50_ms=%.3f\n", pct(lat_notify, nn, 0.50));
		printf("notify_p99_ms=%.3f\n", pct(lat_notify, nn, 0.99));
		printf("notify_max_ms=%.3f\n", nn ? (double) lat_notify[nn - 1] / 1e6 : -1.0);
		printf("notify_missed=%" PRId64 "\n", notify_missed);
	}
	for (int j = 0; j < nconsumers; j++)
		PQfinish(consumers[j].conn);
	if (sc)
		PQfinish(sc);
	if (lc)
		PQfinish(lc);
	return 0;
}

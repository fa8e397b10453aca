# Throughput against clients, from report.js's throughput.dat:
#   gnuplot -e "datafile='...'; outfile='...'; subtitle='...'" bench/throughput.gp
# Columns: clients, then enqueue outbox/plain/pgq/pgboss/graphile, then drain
# outbox/relay/pgq/pgboss/graphile (events/s, medians of the rounds).
if (!exists("subtitle")) subtitle = ''
set terminal pngcairo size 1400,560 font "DejaVu Sans,10" noenhanced
set output outfile
set multiplot layout 1,2 title "outbox benchmark: throughput against clients (".subtitle.")"
set logscale xy
set xtics (1, 4, 16, 64)
set xrange [0.8:80]
set grid
set key bottom right
set xlabel "clients"
set ylabel "events/s"
set format y "%.0s%c"
set datafile missing "NaN"

set title "Enqueue, 1 event per transaction (fsync on)"
plot datafile using 1:3 with linespoints lw 2 pt 5 dt 2 lc rgb "#555555" title "plain INSERT (ceiling)", \
     datafile using 1:2 with linespoints lw 3 pt 7 lc rgb "#d62728" title "outbox.enqueue (1 subscription)", \
     datafile using 1:4 with linespoints lw 2 pt 9 lc rgb "#1f77b4" title "PgQ insert_event", \
     datafile using 1:5 with linespoints lw 2 pt 11 lc rgb "#2ca02c" title "pg-boss send", \
     datafile using 1:6 with linespoints lw 2 pt 13 lc rgb "#9467bd" title "graphile-worker add_job"

set title "Drain a backlog, batches of 100 (consumers)"
set xlabel "consumers"
plot datafile using 1:8 with linespoints lw 2 pt 5 dt 2 lc rgb "#555555" title "plain relay DELETE ... SKIP LOCKED (ceiling)", \
     datafile using 1:7 with linespoints lw 3 pt 7 lc rgb "#d62728" title "outbox claim(100) + ack", \
     datafile using 1:9 with linespoints lw 2 pt 9 lc rgb "#1f77b4" title "PgQ batches (N consumers each read all: deliveries/s)", \
     datafile using 1:10 with linespoints lw 2 pt 11 lc rgb "#2ca02c" title "pg-boss fetch(100) + complete", \
     datafile using 1:11 with linespoints lw 2 pt 13 lc rgb "#9467bd" title "graphile-worker runner"
unset multiplot

# bench/plot.gp: the picture of `make bench`, drawn by scripts/bench.sh with
#   gnuplot -e "growth='growth.dat'; paths='paths.dat'; out='latest.png'; bare=4.2; title='...'" bench/plot.gp
# growth.dat: ledger_keys once_new_us duplicate_us sql_lookup_us (medians); paths.dat: "label" us
# color (medians; color 1 for the bare statement, 2 for the SQL references (the PL/pgSQL pattern,
# the key alone), 3 for idem_*);
# bare: the bare statement's median, drawn as a reference line on both panels.

set terminal pngcairo size 1400,650 font "sans,10" noenhanced
set output out
set multiplot layout 1,2 title title font "sans,12"

# left: cost per call against the number of keys in the ledger
set title "idem_apply cost per call against ledger size"
set logscale x 10
set xtics ("10k" 1e4, "100k" 1e5, "1M" 1e6, "10M" 1e7)
set offsets graph 0.05, graph 0.05, 0, 0
set bmargin 10
set xlabel "keys in the ledger (log scale)"
set ylabel "microseconds per call (median)"
set yrange [0:*]
set key bottom right box opaque
set grid ytics
plot growth using 1:2 with linespoints lw 2 pt 7 title "once, new key", \
     growth using 1:3 with linespoints lw 2 pt 5 title "once, duplicate", \
     growth using 1:4 with linespoints lw 1 pt 4 dt 3 title "SQL lookup of the key (reference)", \
     bare with lines lw 1 dt 2 lc rgb "gray40" title "bare INSERT (fresh table)"

# right: every path side by side
unset logscale x
set offsets 0, 0, 0, 0
set xtics auto
set title "cost per call by path (fresh ledger)"
set xlabel ""
set style fill solid 0.7 border -1
set boxwidth 0.7
set xtics rotate by -35 left
set key top right
set xrange [-0.7:*]
set linetype 11 lc rgb "gray50"
set linetype 12 lc rgb "dark-orange"
set linetype 13 lc rgb "steelblue"
plot paths using 0:2:($3 + 10):xtic(1) with boxes lc variable notitle, \
     paths using 0:2:(sprintf("%.2f", $2)) with labels offset 0,0.8 notitle, \
     bare with lines lw 1 dt 2 lc rgb "gray40" title "bare INSERT"

unset multiplot

# kraken-bench: unit tests of its histogram and client codecs, and an integration test
# that runs every scenario briefly against the built server.
kr_add_test(test_bench_hist SOURCES unit/test_bench_hist.c LIBS kr_bench_core)
kr_add_test(test_bench_codec SOURCES unit/test_bench_codec.c LIBS kr_bench_core)
kr_add_test(test_bench_integration SERVER SOURCES integration/test_bench_integration.c LIBS kr_itest)
add_dependencies(test_bench_integration kraken-bench)
set_property(TEST test_bench_integration APPEND PROPERTY
  ENVIRONMENT "KRAKEN_BENCH_BIN=$<TARGET_FILE:kraken-bench>")

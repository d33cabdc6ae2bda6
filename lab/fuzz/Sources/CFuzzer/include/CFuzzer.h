// libFuzzer's entry for a program with its own main (libclang_rt.fuzzer_no_main):
// Swift cannot take libFuzzer's main, because SwiftPM renames an executable's main.
#include <stddef.h>
#include <stdint.h>
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*UserCb)(const uint8_t *Data, size_t Size));

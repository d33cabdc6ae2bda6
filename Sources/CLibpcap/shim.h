// <pcap/bpf.h> and <linux/bpf.h> both define struct bpf_insn and struct bpf_program;
// rename pcap's so both libraries can live in one program.
#define bpf_insn pcap_bpf_insn
#define bpf_program pcap_bpf_program
#include <pcap/pcap.h>
#undef bpf_insn
#undef bpf_program

import Foundation
import Glibc
import KlabResults

/// `%{ … }%` blocks (packetdrill's code.c): at the block's moment the socket under test's
/// TCP_INFO, TCP_CC_INFO and SO_MEMINFO are taken; after the script, one Python file holds
/// those values as variables (tcpi_snd_cwnd = 10, …) before each block's text, and python3
/// runs it: a failed assert fails the script. The file is kept as code.py in the results.
extension PktPlayer {
    /// struct tcp_info (include/uapi/linux/tcp.h, 6.18): each u32/u64 field's name and offset.
    static let tcpInfoFields: [(String, Int, Int)] = {
        let u32s = ["rto", "ato", "snd_mss", "rcv_mss", "unacked", "sacked", "lost", "retrans", "fackets", "last_data_sent",
                    "last_ack_sent", "last_data_recv", "last_ack_recv", "pmtu", "rcv_ssthresh", "rtt", "rttvar", "snd_ssthresh",
                    "snd_cwnd", "advmss", "reordering", "rcv_rtt", "rcv_space", "total_retrans"]
        var f: [(String, Int, Int)] = u32s.enumerated().map { ("tcpi_" + $0.element, 8 + 4 * $0.offset, 4) }
        f += [("pacing_rate", 104, 8), ("max_pacing_rate", 112, 8), ("bytes_acked", 120, 8), ("bytes_received", 128, 8),
              ("segs_out", 136, 4), ("segs_in", 140, 4), ("notsent_bytes", 144, 4), ("min_rtt", 148, 4), ("data_segs_in", 152, 4),
              ("data_segs_out", 156, 4), ("delivery_rate", 160, 8), ("busy_time", 168, 8), ("rwnd_limited", 176, 8),
              ("sndbuf_limited", 184, 8), ("delivered", 192, 4), ("delivered_ce", 196, 4), ("bytes_sent", 200, 8),
              ("bytes_retrans", 208, 8), ("dsack_dups", 216, 4), ("reord_seen", 220, 4), ("rcv_ooopack", 224, 4), ("snd_wnd", 228, 4),
              ("rcv_wnd", 232, 4), ("rehash", 236, 4), ("total_rto", 240, 2), ("total_rto_recoveries", 242, 2),
              ("total_rto_time", 244, 4), ("received_ce", 248, 4), ("delivered_e1_bytes", 252, 4), ("delivered_e0_bytes", 256, 4),
              ("delivered_ce_bytes", 260, 4), ("received_e1_bytes", 264, 4), ("received_e0_bytes", 268, 4),
              ("received_ce_bytes", 272, 4)].map { ("tcpi_" + $0.0, $0.1, $0.2) }
        return f
    }()

    /// The names code.c writes before the values (tcpi_state, tcpi_ca_state, tcpi_options).
    static let codeSymbols: [(String, Int)] = [
        ("TCP_ESTABLISHED", 1), ("TCP_SYN_SENT", 2), ("TCP_SYN_RECV", 3), ("TCP_FIN_WAIT1", 4), ("TCP_FIN_WAIT2", 5), ("TCP_TIME_WAIT", 6),
        ("TCP_CLOSE", 7), ("TCP_CLOSE_WAIT", 8), ("TCP_LAST_ACK", 9), ("TCP_LISTEN", 10), ("TCP_CLOSING", 11), ("TCP_CA_Open", 0),
        ("TCP_CA_Disorder", 1), ("TCP_CA_CWR", 2), ("TCP_CA_Recovery", 3), ("TCP_CA_Loss", 4), ("TCPI_OPT_TIMESTAMPS", 1),
        ("TCPI_OPT_SACK", 2), ("TCPI_OPT_WSCALE", 4), ("TCPI_OPT_ECN", 8), ("TCPI_OPT_ECN_SEEN", 16), ("TCPI_OPT_SYN_DATA", 32),
        ("TCPI_OPT_USEC_TS", 64), ("TCPI_OPT_TFO_CHILD", 128),
    ]

    static func sockopt(_ fd: Int32, _ level: Int32, _ name: Int32, _ size: Int) -> [UInt8]? {
        var buf = [UInt8](repeating: 0, count: size)
        var len = socklen_t(size)
        guard Glibc.getsockopt(fd, level, name, &buf, &len) == 0 else { return nil }
        return Array(buf.prefix(Int(len))) + [UInt8](repeating: 0, count: size - Int(len))
    }

    func collectCode(_ i: Int, _ text: String) throws(PktFailure) {
        let n = events[i].location.line
        func fail(_ m: String) -> PktFailure { PktFailure(message: "\(file):\(n): runtime error in code: \(m)") }
        guard let s = socketUnderTest, s.liveFD >= 0 else { throw fail("no socket to use for code") }
        guard let info = PktPlayer.sockopt(s.liveFD, Int32(IPPROTO_TCP), 11, 280) else { throw fail("can't find getsockopt to get TCP info") }
        var lenCC = socklen_t(20)
        var cc = [UInt8](repeating: 0, count: 20)
        guard Glibc.getsockopt(s.liveFD, Int32(IPPROTO_TCP), 26, &cc, &lenCC) == 0 else { throw fail("can't find getsockopt to get TCP_CC_INFO") }
        guard let mem = PktPlayer.sockopt(s.liveFD, SOL_SOCKET, 55, 36) else { throw fail("can't find getsockopt to get sk_meminfo") }
        func u(_ b: [UInt8], _ o: Int, _ size: Int) -> UInt64 { (0..<size).reduce(UInt64(0)) { $0 | UInt64(b[o + $1]) << (8 * UInt64($1)) } }
        var out = PktPlayer.codeSymbols.map { "\($0.0) = \($0.1)" }
        let bytes: [(String, UInt64)] = [("tcpi_state", UInt64(info[0])), ("tcpi_ca_state", UInt64(info[1])), ("tcpi_retransmits", UInt64(info[2])),
                                         ("tcpi_probes", UInt64(info[3])), ("tcpi_backoff", UInt64(info[4])), ("tcpi_options", UInt64(info[5])),
                                         ("tcpi_snd_wscale", UInt64(info[6] & 15)), ("tcpi_rcv_wscale", UInt64(info[6] >> 4)),
                                         ("tcpi_delivery_rate_app_limited", UInt64(info[7] & 1))]
        out += bytes.map { "\($0.0) = \($0.1)" }
        out += PktPlayer.tcpInfoFields.map { "\($0.0) = \(u(info, $0.1, $0.2))" }
        let bits = u(info, 276, 4)
        out += ["tcpi_ecn_mode = \(bits & 3)", "tcpi_accecn_opt_seen = \((bits >> 2) & 3)", "tcpi_accecn_fail_mode = \((bits >> 4) & 15)",
                "tcpi_options2 = \(bits >> 8)", ""]
        // TCP_CC_INFO is a union: each interpretation the returned length holds, as code.c does.
        if lenCC >= 20 {
            out += ["bbr_bw_lo = \(u(cc, 0, 4))", "bbr_bw_hi = \(u(cc, 4, 4))", "bbr_bw = \(u(cc, 4, 4) << 32 + u(cc, 0, 4))",
                    "bbr_min_rtt = \(u(cc, 8, 4))", "bbr_pacing_gain = \(u(cc, 12, 4))", "bbr_cwnd_gain = \(u(cc, 16, 4))"]
        }
        if lenCC >= 16 {
            out += ["dctcp_enabled = \(u(cc, 0, 2))", "dctcp_ce_state = \(u(cc, 2, 2))", "dctcp_alpha = \(u(cc, 4, 4))",
                    "dctcp_ab_ecn = \(u(cc, 8, 4))", "dctcp_ab_tot = \(u(cc, 12, 4))", "tcpv_enabled = \(u(cc, 0, 4))",
                    "tcpv_rttcnt = \(u(cc, 4, 4))", "tcp_rtt = \(u(cc, 8, 4))", "tcp_minrtt = \(u(cc, 12, 4))"]
        }
        out.append("")
        let memNames = ["RMEM_ALLOC", "RCVBUF", "WMEM_ALLOC", "SNDBUF", "FWD_ALLOC", "WMEM_QUEUED", "OPTMEM", "BACKLOG", "DROPS"]
        out += memNames.enumerated().map { "SK_MEMINFO_\($0.element) = \(u(mem, 4 * $0.offset, 4))" }
        out += ["", "_file = '\(file)'", "_line = \(n)", text, "", ""]
        codeFragments.append(out.joined(separator: "\n"))
    }

    /// code_execute: python3 on the collected file, after the script.
    func runCode() throws(PktFailure) {
        guard !codeFragments.isEmpty else { return }
        let path = "\(directory)/code.py"
        let preamble = """
            import sys
            import traceback
            def excepthook(etype, value, tb):
              sys.stderr.write("%s:%d: error in Python code\\n" %
                               (_file, _line))
              traceback.print_exception(etype, value, tb)

            sys.excepthook = excepthook


            """
        do {
            try OutputFile.write((preamble + codeFragments.joined()).utf8, to: path)
        } catch {
            throw PktFailure(message: "\(file): error executing code: writing \(path): \(error)")
        }
        let err: String?
        do { err = try shell("\(config.codeCommand) '\(path)'", what: "code", line: nil) } catch {
            throw PktFailure(message: "\(file): error executing code: \(error)")
        }
        if let err {
            let output = ((try? String(contentsOfFile: "\(directory)/commands/code.out", encoding: .utf8)) ?? "")
                .split(separator: "\n").suffix(6).map { "\n  \($0)" }.joined()
            throw PktFailure(message: "\(file): error executing code: '\(config.codeCommand)' returned \(err)\(output)")
        }
    }
}

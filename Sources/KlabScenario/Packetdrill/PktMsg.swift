import Foundation
import Glibc

/// Control messages for sendmsg and recvmsg (packetdrill's cmsg_new and cmsg_expect_eq):
/// the buffer the script's msg_control describes, and the comparison of what recvmsg filled
/// in with it: extended errors field by field, SCM_TIMESTAMPING stamps within the tolerance of
/// their script times, TCP_NLA statistics by their rules, anything else byte for byte.
enum PktControl {
    /// struct cmsghdr on x86-64: cmsg_len (size_t), cmsg_level, cmsg_type; data 8-aligned.
    static let header = 16
    static func align(_ n: Int) -> Int { (n + 7) & ~7 }

    /// TCP_NLA_* attribute sizes (include/uapi/linux/tcp.h), by type.
    static let nlaSizes: [Int] = [4, 8, 8, 8, 8, 8, 8, 8, 4, 4, 4, 1, 1, 4, 1, 4, 4, 4, 8, 8, 4, 4, 4]
    static let ignore: UInt64 = ~0

    struct Message {
        let level: Int32
        let type: Int32
        let data: [UInt8]
    }

    /// cmsg_new: the control buffer for `list`.
    static func build(_ list: [PktValue]) throws(PktEvalError) -> [UInt8] {
        var out: [UInt8] = []
        for v in list {
            guard case .cmsg(let level, let type, let data) = v else { throw PktEvalError("Bad type; actual: \(v.typeName) expected: cmsg") }
            var body: [UInt8]
            switch data {
            case .integer(let n): body = le(UInt64(UInt32(truncatingIfNeeded: n)), 4)
            case .scmTimestamping(let s, let ns): body = le(UInt64(bitPattern: s), 8) + le(UInt64(bitPattern: ns), 8) + [UInt8](repeating: 0, count: 32)
            case .list(let l), .braces(let l): body = try nla(l)
            case .sockExtendedErr(let e, let o, let t, let c, let i, let d):
                body = le(UInt64(UInt32(truncatingIfNeeded: e)), 4) + [UInt8(truncatingIfNeeded: o), UInt8(truncatingIfNeeded: t), UInt8(truncatingIfNeeded: c), 0]
                    + le(UInt64(UInt32(truncatingIfNeeded: i)), 4) + le(UInt64(UInt32(truncatingIfNeeded: d)), 4)
                // The offender's address follows: a sockaddr_in for SOL_IP, sockaddr_in6 otherwise.
                body += [UInt8](repeating: 0, count: level == 0 ? 16 : 28)
            default: throw PktEvalError("Unrecognized type for cmsg_data")
            }
            out += le(UInt64(header + body.count), 8) + le(UInt64(UInt32(truncatingIfNeeded: level)), 4)
                + le(UInt64(UInt32(truncatingIfNeeded: type)), 4) + body
            out += [UInt8](repeating: 0, count: align(body.count) - body.count)
            if out.count > 2000 { throw PktEvalError("control messages longer than 2000 bytes") }
        }
        return out
    }

    static func le(_ v: UInt64, _ n: Int) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) } }
    static func readLE(_ b: some Collection<UInt8>, _ o: Int, _ n: Int) -> UInt64 {
        let a = Array(b)
        return (0..<n).reduce(0) { $0 | UInt64(a[o + $1]) << (8 * UInt64($1)) }
    }

    /// `[TCP_NLA_X=v, …]` as netlink attributes; `...` values are ignored when comparing.
    static func nla(_ list: [PktValue]) throws(PktEvalError) -> [UInt8] {
        var out: [UInt8] = []
        for v in list {
            guard case .assign(let name, let value) = v else { throw PktEvalError("Bad type; actual: \(v.typeName) expected: binary_expression") }
            guard let type = PktSymbols.value(name), type >= 0, type < nlaSizes.count else { throw PktEvalError("bad NLA type \(name)") }
            let size = nlaSizes[Int(type)]
            let raw: UInt64
            switch value {
            case .integer(let n): raw = UInt64(bitPattern: n)
            case .ellipsis: raw = ignore
            default: throw PktEvalError("values must be numeric or ellipsis")
            }
            let len = 4 + size
            out += le(UInt64(len), 2) + le(UInt64(type), 2) + le(raw, size)
            out += [UInt8](repeating: 0, count: ((len + 3) & ~3) - len)
        }
        return out
    }

    /// The messages in a control buffer of `length` bytes, as CMSG_FIRSTHDR/CMSG_NXTHDR walk it.
    static func messages(_ b: [UInt8], length: Int) -> [Message] {
        var out: [Message] = []
        var o = 0
        while o + header <= length {
            let len = Int(readLE(b, o, 8))
            if len == 0 || len < header || o + len > length { break }
            out.append(Message(level: Int32(truncatingIfNeeded: readLE(b, o + 8, 4)), type: Int32(truncatingIfNeeded: readLE(b, o + 12, 4)),
                               data: Array(b[(o + header)..<(o + len)])))
            o += align(len)
        }
        return out
    }

    /// cmsg_expect_eq. `toLive` maps a script time (µs) to a live monotonic one.
    static func compare(expected: [Message], actual: [Message], tolerance: Int64, toLive: (Int64) -> Int64,
                        liveStart: Int64) -> String? {
        for (i, (e, a)) in zip(expected, actual).enumerated() {
            if a.level != e.level { return "Bad level in cmsg \(i): expected=\(e.level) actual=\(a.level)" }
            if a.type != e.type { return "Bad type in cmsg \(i): expected=\(e.type) actual=\(a.type)" }
            if a.data.count != e.data.count { return "Bad len in cmsg \(i): expected=\(e.data.count + header) actual=\(a.data.count + header)" }
            if (a.level == 0 && a.type == 11) || (a.level == 41 && a.type == 25) {
                let names = ["errno", "origin", "type", "code", "info", "data"]
                let fields = [(0, 4), (4, 1), (5, 1), (6, 1), (8, 4), (12, 4)]
                for (n, (o, s)) in zip(names, fields) where readLE(e.data, o, s) != readLE(a.data, o, s) {
                    return "Bad \(n) in extended err \(i): expected=\(readLE(e.data, o, s)) actual=\(readLE(a.data, o, s))"
                }
            } else if a.level == 1 && a.type == 37 {
                // Kernel stamps are CLOCK_REALTIME; klab's script clock is CLOCK_MONOTONIC.
                var rt = timespec(), mono = timespec()
                clock_gettime(CLOCK_REALTIME, &rt)
                clock_gettime(CLOCK_MONOTONIC, &mono)
                let offset = (Int64(rt.tv_sec) - Int64(mono.tv_sec)) * 1_000_000 + (Int64(rt.tv_nsec) - Int64(mono.tv_nsec)) / 1000
                for k in 0..<3 {
                    let es = Int64(bitPattern: readLE(e.data, 16 * k, 8)), ens = Int64(bitPattern: readLE(e.data, 16 * k + 8, 8))
                    if es == 0 && ens == 0 { continue }
                    let expectedUs = toLive(es * 1_000_000 + ens / 1000)
                    let actualUs = Int64(bitPattern: readLE(a.data, 16 * k, 8)) * 1_000_000 + Int64(bitPattern: readLE(a.data, 16 * k + 8, 8)) / 1000 - offset
                    if abs(expectedUs - actualUs) > tolerance {
                        return "Bad timestamp \(k) in scm_timestamping \(i): expected=\(expectedUs) (\(expectedUs - liveStart)) actual=\(actualUs) (\(actualUs - liveStart)) start=\(liveStart)"
                    }
                }
            } else if a.level == 1 && a.type == 54 {
                if let err = compareStats(e.data, a.data, tolerance: tolerance, index: i) { return err }
            } else if a.data != e.data {
                return "Bad data in cmsg \(i): expected=\(PktPlayer.printable(e.data)) actual=\(PktPlayer.printable(a.data))"
            }
        }
        if expected.count == actual.count { return nil }
        return actual.count > expected.count ? "received more than \(expected.count) cmsgs" : "received only \(actual.count) cmsgs"
    }

    /// scm_opt_stats_expect_eq: times within the tolerance, counters exact, `...` skipped.
    static func compareStats(_ e: [UInt8], _ a: [UInt8], tolerance: Int64, index: Int) -> String? {
        var o = 0
        while o + 4 <= e.count && o + 4 <= a.count {
            let (elen, etype) = (Int(readLE(e, o, 2)), Int(readLE(e, o + 2, 2)))
            let (alen, atype) = (Int(readLE(a, o, 2)), Int(readLE(a, o + 2, 2)))
            if etype != atype { return "Bad nla_type \(index): expected=\(etype) actual=\(atype)" }
            if elen != alen { return "Bad nla_len \(index): expected=\(elen) actual=\(alen)" }
            guard etype < nlaSizes.count, o + elen <= e.count, o + elen <= a.count else { return "Bad nla_type \(index): expected=\(etype) actual=\(atype)" }
            let size = nlaSizes[etype]
            let ev = readLE(e, o + 4, size), av = readLE(a, o + 4, size)
            let all = size == 8 ? ignore : (UInt64(1) << (8 * UInt64(size))) - 1
            if etype >= 1 && etype <= 3 {
                if !(ev == all || (ev != 0 && abs(Int64(bitPattern: ev &- av)) <= tolerance) || (ev == 0 && av == 0)) {
                    return "Bad \(etype): expected=\(ev) actual=\(av)"
                }
            } else if ev != av && ev != all {
                return "Bad \(etype): expected=\(ev) actual=\(av)"
            }
            o += (elen + 3) & ~3
        }
        return nil
    }
}

import Foundation
import Glibc

/// TCP Fast Open server cookies carry the addresses they were made for: the kernel makes them
/// as SipHash-2-4 of (source, destination) under the Fast Open key (net/ipv4/tcp_fastopen.c,
/// __tcp_fastopen_cookie_gen_cipher). klab moves the script's addresses into the lab, so it
/// moves these cookies too, as packetdrill moves sequence numbers: a cookie the script gives
/// for its own addresses is replaced by the one for the lab's before it is injected, and a
/// cookie the host sends for the lab's addresses is shown to the script as the one for its own.
enum PktFastOpen {
    /// SipHash-2-4 of 8 bytes, as the kernel's siphash() computes it (key words little-endian).
    static func siphash(_ data: [UInt8], key: [UInt8]) -> UInt64 {
        func le64(_ b: [UInt8], _ o: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(b[o + $1]) << (8 * UInt64($1)) } }
        let k0 = le64(key, 0), k1 = le64(key, 8)
        var v0 = k0 ^ 0x736f_6d65_7073_6575, v1 = k1 ^ 0x646f_7261_6e64_6f6d
        var v2 = k0 ^ 0x6c79_6765_6e65_7261, v3 = k1 ^ 0x7465_6462_7974_6573
        func rotl(_ x: UInt64, _ b: UInt64) -> UInt64 { (x << b) | (x >> (64 - b)) }
        func round() {
            v0 = v0 &+ v1; v1 = rotl(v1, 13); v1 ^= v0; v0 = rotl(v0, 32)
            v2 = v2 &+ v3; v3 = rotl(v3, 16); v3 ^= v2
            v0 = v0 &+ v3; v3 = rotl(v3, 21); v3 ^= v0
            v2 = v2 &+ v1; v1 = rotl(v1, 17); v1 ^= v2; v2 = rotl(v2, 32)
        }
        var k = 0
        while k + 8 <= data.count {
            let m = le64(data, k)
            v3 ^= m; round(); round(); v0 ^= m
            k += 8
        }
        var last = UInt64(data.count) << 56
        for (n, byte) in data[k...].enumerated() { last |= UInt64(byte) << (8 * UInt64(n)) }
        v3 ^= last; round(); round(); v0 ^= last
        v2 ^= 0xff
        round(); round(); round(); round()
        return v0 ^ v1 ^ v2 ^ v3
    }

    /// The 8-byte cookie for a SYN from `source` to `destination` under a 16-byte key.
    static func cookie(key: [UInt8], source: UInt32, destination: UInt32) -> [UInt8] {
        var data: [UInt8] = []
        for a in [source, destination] {
            for shift: UInt32 in [24, 16, 8, 0] { data.append(UInt8(truncatingIfNeeded: a >> shift)) }
        }
        let h = siphash(data, key: key)
        return (0..<8).map { UInt8(truncatingIfNeeded: h >> (8 * UInt64($0))) }
    }

    /// The keys of /proc/sys/net/ipv4/tcp_fastopen_key's text: words printed from little-endian bytes.
    static func keys(sysctl text: String) -> [[UInt8]] {
        text.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: ",").compactMap { k in
            let words = k.split(separator: "-").compactMap { UInt32($0, radix: 16) }
            guard words.count == 4 else { return nil }
            return words.flatMap { w in (0..<4).map { UInt8(truncatingIfNeeded: w >> (8 * UInt32($0))) } }
        }
    }

    /// Finds the Fast Open cookie (kind 34, or 254 with magic F989) of 8 bytes in an option area.
    static func cookieOffset(_ o: [UInt8]) -> Int? {
        var i = 0
        while i < o.count {
            if o[i] == 0 || o[i] == 1 { i += 1; continue }
            guard i + 1 < o.count, o[i + 1] >= 2, i + Int(o[i + 1]) <= o.count else { return nil }
            let len = Int(o[i + 1])
            if o[i] == 34 && len == 10 { return i + 2 }
            if o[i] == 254 && len == 12 && o[i + 2] == 0xF9 && o[i + 3] == 0x89 { return i + 4 }
            i += len
        }
        return nil
    }
}

extension PktPlayer {
    /// The keys the host makes cookies with: the listener's own (TCP_FASTOPEN_KEY), then the
    /// namespace's (net.ipv4.tcp_fastopen_key, read inside the host).
    func fastOpenKeys() -> [[UInt8]] {
        var out: [[UInt8]] = []
        if let l = fds.last(where: { !$0.closed && $0.socket?.state == .passiveListening }) {
            var buf = [UInt8](repeating: 0, count: 32)
            var len = socklen_t(32)
            if Glibc.getsockopt(l.liveFD, Int32(IPPROTO_TCP), 33, &buf, &len) == 0 {
                out += stride(from: 0, to: Int(len) - 15, by: 16).map { Array(buf[$0..<($0 + 16)]) }
            }
        }
        if let text = try? String(contentsOfFile: "/proc/sys/net/ipv4/tcp_fastopen_key", encoding: .utf8) {
            out += PktFastOpen.keys(sysctl: text)
        }
        return out
    }

    /// Replaces `options`' cookie made for (from, to) by the one for (newFrom, newTo).
    func remapCookie(_ options: inout [UInt8], from: (UInt32, UInt32), to: (UInt32, UInt32)) {
        guard let at = PktFastOpen.cookieOffset(options) else { return }
        let cookie = Array(options[at..<(at + 8)])
        for key in fastOpenKeys() where PktFastOpen.cookie(key: key, source: from.0, destination: from.1) == cookie {
            options.replaceSubrange(at..<(at + 8), with: PktFastOpen.cookie(key: key, source: to.0, destination: to.1))
            return
        }
    }
}

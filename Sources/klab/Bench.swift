import ArgumentParser
import Foundation
import KlabLab
import KlabPacket

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure klab's hot paths on this machine's kernel.",
        discussion: prose("""
            Each benchmark has a C reference in lab/bench/; `sudo lab/bench/run` builds
            both and runs them alternately, so that klab and C are compared in the same
            run.
            """),
        subcommands: [TunPingPong.self, TracerCost.self, CheckThroughput.self])
}

extension Bench {
    struct TunPingPong: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "tun-pingpong",
            abstract: "ICMP echo ping-pong through a TUN: round trips per second.",
            discussion: prose("""
                Builds a lab host (an anonymous network namespace) with a TUN at
                198.18.0.1/24, then repeats: write one prebuilt 84-byte ICMP echo request from
                198.18.0.2 into the TUN, read the kernel's echo reply back, and check its
                type, id and sequence. The kernel runs its whole receive path and the reply's
                transmit inside write(), so one round trip is one write() and one read() of
                klab's TunDevice, plus the IPv4View check: no allocation and no poll in the
                loop. Only the sequence number and the ICMP checksum change from one request
                to the next.

                After a warm-up, each round times COUNT round trips and prints round trips per
                second; the median of the rounds comes last. lab/bench/tun_pingpong.c is the C
                reference for the same loop. Needs root. The namespace, its TUN and all lab
                traffic go away when klab exits.
                """))

        @Option(help: "Round trips per round.")
        var count = 200_000

        @Option(help: "Timed rounds.")
        var rounds = 5

        @Option(help: "Untimed round trips before the first round.")
        var warmup = 20_000

        @Flag(help: "Print one JSON object instead of text.")
        var json = false

        func validate() throws {
            guard count > 0, rounds > 0, warmup >= 0 else {
                throw ValidationError("--count and --rounds must be positive, --warmup not negative")
            }
        }

        func run() throws {
            do { try measure() } catch { die(error) }
        }

        static let hostAddress = IPv4Address(198, 18, 0, 1)
        static let peerAddress = IPv4Address(198, 18, 0, 2)
        static let echoID: UInt16 = 0x6B6C  // "kl"

        /// A lab host with its TUN, and the echo request (in `out`) and a reply buffer the
        /// ping-pong reuses. The caller deallocates the buffers and shuts the host down.
        static func makeLab() throws -> (host: LabHost, tun: TunDevice, out: UnsafeMutableRawBufferPointer, buf: UnsafeMutableRawBufferPointer) {
            let host = try LabHost(name: "bench")
            let tun = try host.addLink(name: "kbench0", address: hostAddress, prefixLength: 24)
            let echo = Packet.icmpEcho(
                from: peerAddress, to: hostAddress, id: echoID, sequence: 0, payload: (0..<56).map { UInt8($0) }, ipID: 1)
            let out = UnsafeMutableRawBufferPointer.allocate(byteCount: try echo.serializedLength(), alignment: 16)
            _ = try echo.serialize(into: out)
            return (host, tun, out, UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 16))
        }

        private func measure() throws {
            try Preflight.check(tracing: false)
            let (host, tun, out, buf) = try Self.makeLab()
            defer { host.shutdown(); out.deallocate(); buf.deallocate() }
            let packetHex = out.map { String(format: "%02x", $0) }.joined()

            // The first reply is awaited with a timeout, so a broken lab fails instead of hanging.
            var seq: UInt16 = 0
            try tun.write(UnsafeRawBufferPointer(out))
            guard let n = try tun.read(into: buf, timeoutMs: 2000) else {
                throw Failure(description: "no echo reply on \(tun.name) within 2 s")
            }
            try Self.check(UnsafeRawBufferPointer(rebasing: buf[..<n]), seq: seq)
            try Self.pingPong(tun, out, buf, count: warmup, seq: &seq)

            var rates: [Double] = []
            rates.reserveCapacity(rounds)
            for r in 1...rounds {
                let t0 = Clock.monotonicNs()
                try Self.pingPong(tun, out, buf, count: count, seq: &seq)
                let ns = Clock.monotonicNs() - t0
                rates.append(Double(count) * 1e9 / Double(ns))
                if !json {
                    print(String(format: "round %d: %9.0f round trips/s  (%.3f µs each)", r, rates[r - 1], Double(ns) / Double(count) / 1e3))
                }
            }
            let median = Self.median(rates)
            if json {
                let result = Result(
                    count: count, warmup: warmup, packetBytes: out.count,
                    packet: packetHex, rounds: rates.map { $0.rounded() },
                    median: median.rounded())
                let enc = JSONEncoder()
                enc.outputFormatting = [.sortedKeys]
                print(String(decoding: try enc.encode(result), as: UTF8.self))
            } else {
                print(String(format: "median: %.0f round trips/s over %d rounds of %d (%d-byte echo, %d warm-up)",
                             median, rounds, count, out.count, warmup))
            }
        }

        struct Failure: Error, CustomStringConvertible {
            let description: String
        }

        struct Result: Encodable {
            var benchmark = "tun-pingpong"
            let count, warmup, packetBytes: Int
            let packet: String
            let rounds: [Double]
            let median: Double
        }

        /// `count` round trips: bump the sequence number (patching the ICMP checksum), write the
        /// request, read and check the reply. Nothing here allocates.
        static func pingPong(_ tun: TunDevice, _ out: UnsafeMutableRawBufferPointer,
                             _ buf: UnsafeMutableRawBufferPointer, count: Int, seq: inout UInt16) throws {
            let request = UnsafeRawBufferPointer(out)
            for _ in 0..<count {
                seq &+= 1
                setSequence(out, seq)
                try tun.write(request)
                let n = try tun.readBlocking(into: buf)
                try check(UnsafeRawBufferPointer(rebasing: buf[..<n]), seq: seq)
            }
        }

        /// Writes the echo sequence number and updates the ICMP checksum incrementally
        /// (RFC 1624, eqn. 3). The request's IP header is 20 bytes.
        @inline(__always)
        static func setSequence(_ p: UnsafeMutableRawBufferPointer, _ seq: UInt16) {
            let old = UInt16(bigEndian: p.loadUnaligned(fromByteOffset: 26, as: UInt16.self))
            let hc = UInt16(bigEndian: p.loadUnaligned(fromByteOffset: 22, as: UInt16.self))
            var sum = UInt32(~hc) + UInt32(~old) + UInt32(seq)
            sum = (sum & 0xFFFF) + (sum >> 16)
            sum = (sum & 0xFFFF) + (sum >> 16)
            p.storeBytes(of: (~UInt16(truncatingIfNeeded: sum)).bigEndian, toByteOffset: 22, as: UInt16.self)
            p.storeBytes(of: seq.bigEndian, toByteOffset: 26, as: UInt16.self)
        }

        @inline(__always)
        static func check(_ reply: UnsafeRawBufferPointer, seq: UInt16) throws {
            guard let v = IPv4View(reply), v.icmpType == ICMPType.echoReply, v.icmpID == echoID,
                  v.icmpSequence == seq else {
                throw Failure(description: "expected echo reply id \(echoID) seq \(seq), read \(reply.count) bytes: "
                              + reply.prefix(40).map { String(format: "%02x", $0) }.joined())
            }
        }

        static func median(_ xs: [Double]) -> Double {
            let s = xs.sorted()
            return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
        }
    }
}

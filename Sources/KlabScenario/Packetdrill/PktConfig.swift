import Foundation

/// packetdrill's run configuration (config.c): its defaults, changed by `--name=value` lines in
/// the script and then by the command line (klab's `--set NAME=VALUE` are `-D` definitions).
public struct PktConfig: Sendable {
    public var ipVersion = "ipv4"
    /// The script's own addresses; klab maps them into the lab prefix (PktAddressMap).
    public var localIP = "192.168.0.1"
    public var remoteIP = "192.0.2.1"
    public var gatewayIP = "192.168.0.1"
    public var netmaskIP = "255.255.0.0"
    public var bindPort: UInt16 = 8080
    public var connectPort: UInt16 = 8080
    /// --mss: the MSS the peer's injected packets carry in the TUN's GSO metadata.
    public var mss: Int?
    public var mtu: UInt32 = 1500
    public var toleranceUs: Int64 = 4000
    public var tolerancePercent = 12.5
    public var tcpTsEcrScaled = false
    /// 0: outbound TS val is not checked.
    public var tcpTsTickUs: Int64 = 0
    public var strictSegments = false
    public var nonFatalPacket = false
    public var nonFatalSyscall = false
    public var defines: [String: String] = [:]
    public var codeCommand = "python3"
    public var codeSockopt = ""
    public var verbose = false

    public init() {}

    /// What each option takes: nil arg means it takes none.
    static let known: [String: Bool] = [
        "ip_version": true, "bind_port": true, "code_command": true, "code_format": true, "code_sockopt": true,
        "connect_port": true, "remote_ip": true, "local_ip": true, "gateway_ip": true, "netmask_ip": true, "speed": true,
        "mss": true, "mtu": true, "init_scripts": true, "tolerance_usecs": true, "tolerance_percent": true,
        "wire_client": false, "wire_server": false, "wire_server_ip": true, "wire_server_at": true, "wire_server_port": true,
        "wire_client_dev": true, "wire_server_dev": true, "so_filename": true, "so_flags": true, "tcp_ts_ecr_scaled": false,
        "tcp_ts_tick_usecs": true, "strict_segments": false, "non_fatal": true, "dry_run": false, "is_anyip": false,
        "send_omit_free": false, "psp_udp_port": true, "debug": false, "define": true, "verbose": false,
    ]

    /// Applies one option as config.c's process_option does; errors name it as packetdrill does.
    public mutating func apply(_ name: String, _ value: String?, at loc: SourceLocation?) throws(ScenarioError) {
        guard let takesValue = PktConfig.known[name] else { throw ScenarioError(loc, "option '\(name)' unknown") }
        if takesValue && value == nil { throw ScenarioError(loc, "option '\(name)' requires an argument") }
        if !takesValue && value != nil { throw ScenarioError(loc, "option '\(name)' forbids an argument") }
        let v = value ?? ""
        func bad() -> ScenarioError { ScenarioError(loc, "bad --\(name): \(v)") }
        func port() throws(ScenarioError) -> UInt16 {
            guard let p = Int(v), (1...0xffff).contains(p) else { throw bad() }
            return UInt16(p)
        }
        func ipv4() throws(ScenarioError) -> String {
            guard IPv4Text.parse(v) != nil else {
                throw ScenarioError(loc, "--\(name)=\(v): klab's lab is IPv4; give an IPv4 address")
            }
            return v
        }
        switch name {
        case "ip_version":
            guard ["ipv4", "ipv4-mapped-ipv6", "ipv6"].contains(v) else { throw bad() }
            guard v == "ipv4" else { throw ScenarioError(loc, "klab runs IPv4 scripts only: --ip_version=\(v) is not supported") }
            ipVersion = v
        case "bind_port": bindPort = try port()
        case "connect_port": connectPort = try port()
        case "remote_ip": remoteIP = try ipv4()
        case "local_ip": localIP = try ipv4()
        case "gateway_ip": gatewayIP = try ipv4()
        case "netmask_ip":
            guard let m = IPv4Text.parse(v), IPv4Text.prefixLength(m) != nil else { throw bad() }
            netmaskIP = v
        case "mss":
            guard let m = Int(v), m > 0 else { throw bad() }
            mss = m
        case "mtu":
            guard let m = UInt32(v), (68...65535).contains(m) else { throw bad() }
            mtu = m
        case "tolerance_usecs":
            guard let t = Int64(v), t > 0 else { throw bad() }
            toleranceUs = t
        case "tolerance_percent":
            guard let p = Double(v), (0...100).contains(p) else { throw bad() }
            tolerancePercent = p
        case "tcp_ts_ecr_scaled": tcpTsEcrScaled = true
        case "tcp_ts_tick_usecs":
            guard let t = Int64(v), (0...1_000_000).contains(t) else { throw bad() }
            tcpTsTickUs = t
        case "strict_segments": strictSegments = true
        case "non_fatal":
            for t in v.split(whereSeparator: { $0 == "," || $0 == " " }) {
                if t == "packet" { nonFatalPacket = true }
                if t == "syscall" { nonFatalSyscall = true }
            }
        case "define":
            guard let eq = v.firstIndex(of: "="), eq != v.startIndex else { throw ScenarioError(loc, "bad definition: \(v)") }
            defines[String(v[..<eq])] = String(v[v.index(after: eq)...])
        case "code_command": codeCommand = v
        case "code_format":
            guard v == "python" else { throw ScenarioError(loc, "unsupported --code_format '\(v)'") }
        case "code_sockopt":
            guard ["", "TCP_INFO", "TCP_CC_INFO", "SO_MEMINFO"].contains(v) else { throw ScenarioError(loc, "unsupported --code_sockopt '\(v)'") }
            codeSockopt = v
        case "speed":
            guard v == "0" else { throw ScenarioError(loc, "klab does not support --speed yet (packetdrill runs ethtool on the device)") }
        case "verbose": verbose = true
        case "debug", "dry_run", "send_omit_free": break
        case "wire_client", "wire_server", "wire_server_ip", "wire_server_at", "wire_server_port", "wire_client_dev",
             "wire_server_dev":
            throw ScenarioError(loc, "klab does not support packetdrill's wire client/server mode (--\(name)): klab plays the remote end itself")
        case "so_filename", "so_flags":
            throw ScenarioError(loc, "klab does not support --\(name): klab tests the running kernel's stack, not a shared-object stack")
        case "psp_udp_port":
            throw ScenarioError(loc, "klab does not support PSP encapsulation (--psp_udp_port) yet")
        case "is_anyip":
            throw ScenarioError(loc, "klab does not support --is_anyip yet")
        case "init_scripts":
            throw ScenarioError(loc, "klab does not support --init_scripts yet: run the commands in an init `command` line")
        default: throw ScenarioError(loc, "option '\(name)' unknown")
        }
    }
}

/// Dotted-quad text and netmasks, without a socket call.
enum IPv4Text {
    static func parse(_ s: String) -> UInt32? {
        let parts = s.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var v: UInt32 = 0
        for p in parts {
            guard let b = UInt8(p) else { return nil }
            v = v << 8 | UInt32(b)
        }
        return v
    }

    static func format(_ v: UInt32) -> String { "\(v >> 24).\((v >> 16) & 255).\((v >> 8) & 255).\(v & 255)" }

    /// The prefix length of a contiguous netmask, or nil.
    static func prefixLength(_ mask: UInt32) -> Int? {
        let ones = mask.nonzeroBitCount
        return mask == (ones == 0 ? 0 : ~UInt32(0) << (32 - ones)) ? ones : nil
    }
}

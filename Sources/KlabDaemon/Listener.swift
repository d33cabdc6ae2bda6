import Foundation
import Hummingbird
import KlabClient

/// klab daemon's optional loopback TCP listener (`--listen 127.0.0.1:PORT`): the same API as
/// the socket, each request with `Authorization: Bearer TOKEN`. Loopback only: the token
/// crosses in clear text, and lab control is not for the network.
public struct Listener: Sendable {
    public let host: String
    public let port: Int
    /// `--token-file`: a file of the daemon's owner's, mode 0600 or stricter; nil: the daemon
    /// makes a token and writes it next to its socket (Listener.tokenFile).
    public let tokenFile: String?
    /// The token read from `tokenFile`.
    let given: String?

    /// Where a token the daemon made goes: beside the socket, mode 0600, root's.
    public static func tokenFile(socket: String) -> String {
        let dir = (socket as NSString).deletingLastPathComponent
        return (dir.isEmpty ? "." : dir) + "/klab.token"
    }

    /// HOST:PORT with HOST 127.0.0.0/8, localhost or [::1]; anything else is refused.
    public init(_ address: String, tokenFile: String?) throws {
        guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]), (0...65535).contains(port) else {
            throw Failure("--listen takes HOST:PORT on loopback (127.0.0.1:7001), not '\(address)'")
        }
        var host = String(address[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        if host == "localhost" { host = "127.0.0.1" }
        var v4 = in_addr(), v6 = in6_addr()
        let loopback =
            inet_pton(AF_INET, host, &v4) == 1 ? UInt32(bigEndian: v4.s_addr) >> 24 == 127
            : inet_pton(AF_INET6, host, &v6) == 1 && withUnsafeBytes(of: &v6) { Array($0) } == [UInt8](repeating: 0, count: 15) + [1]
        guard loopback else {
            throw Failure("--listen \(address): klab daemon listens on loopback only (127.0.0.0/8 or [::1]); the API runs commands as root")
        }
        (self.host, self.port, self.tokenFile) = (host, port, tokenFile)
        given = try tokenFile.map(Listener.read)
    }

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
        init(_ d: String) { description = d }
    }

    /// A token file, checked: a regular file of the daemon's user, mode 0600 or stricter, one
    /// word of 16 characters at least.
    static func read(_ path: String) throws -> String {
        var st = stat()
        guard stat(path, &st) == 0 else { throw Failure("--token-file \(path): \(String(cString: strerror(errno)))") }
        guard st.st_mode & S_IFMT == S_IFREG else { throw Failure("--token-file \(path) is not a regular file") }
        guard st.st_uid == geteuid() else { throw Failure("--token-file \(path) belongs to uid \(st.st_uid), not to the daemon's user (uid \(geteuid())): chown it") }
        guard st.st_mode & 0o077 == 0 else {
            throw Failure("--token-file \(path) is mode \(String(st.st_mode & 0o777, radix: 8)): others may read it; chmod 600 \(path)")
        }
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { throw Failure("--token-file \(path): cannot read it as UTF-8 text") }
        let token = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard token.count >= 16, !token.contains(where: \.isWhitespace) else {
            throw Failure("--token-file \(path): the token must be one word of 16 characters or more (openssl rand -hex 32 > \(path))")
        }
        return token
    }

    /// The token: the one read from `tokenFile`, or one made now (256 random bits, hex) and
    /// written to `made`, mode 0600.
    func token(made: String) throws -> String {
        if let given { return given }
        var rng = SystemRandomNumberGenerator()  // getrandom(2)
        let token = (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &rng)) }.joined()
        unlink(made)
        let fd = open(made, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw Failure("cannot write the token to \(made): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let line = Array((token + "\n").utf8)
        guard fchmod(fd, 0o600) == 0, write(fd, line, line.count) == line.count else {
            let e = errno
            unlink(made)
            throw Failure("cannot write the token to \(made): \(String(cString: strerror(e)))")
        }
        return token
    }

    /// The router's answers for a request that carries the token; 401 for any other.
    static func gate(_ responder: some HTTPResponder<DaemonContext>, token: String) -> CallbackResponder<DaemonContext> {
        CallbackResponder { request, context in
            let given = request.headers[.authorization].flatMap { h -> Substring? in
                let parts = h.split(separator: " ", maxSplits: 1)
                return parts.count == 2 && parts[0].lowercased() == "bearer" ? parts[1] : nil
            }
            guard let given, same(Array(given.utf8), Array(token.utf8)) else {
                var response = try Routes.json(
                    API.Problem(given == nil ? "this listener needs Authorization: Bearer TOKEN (klab daemon's --token-file, or the klab.token beside its socket)" : "wrong token"),
                    status: .unauthorized)
                response.headers[.wwwAuthenticate] = "Bearer realm=\"klab\""
                return response
            }
            return try await responder.respond(to: request, context: context)
        }
    }

    /// Compares in a time that does not depend on where the two differ.
    static func same(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        var diff: UInt8 = a.count == b.count ? 0 : 1
        for i in 0..<max(a.count, b.count) { diff |= (i < a.count ? a[i] : 0) ^ (i < b.count ? b[i] : 0) }
        return diff == 0
    }
}

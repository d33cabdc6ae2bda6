import Foundation
import Hummingbird
import KlabClient
import NIOCore
import NIOHTTPTypes

/// Cuts off a client that is slow to send its request (one byte a second, say). An idle
/// timer does not: each byte restarts it. From the first byte of a request its head must
/// arrive whole within API.headSeconds (else 408 and the connection closes); from its head,
/// its body within API.bodySeconds (the routes that read a body answer 408 then; this
/// closes the connection a little later, for a body nobody reads).
///
/// It sits after NIO's HTTP/1 decoder, which hands on every read (channelReadComplete) even
/// before it has decoded a part: that is how it sees a request start without parsing it.
final class RequestDeadline: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    /// Bytes of a request have come, its head not yet.
    private var started = false
    /// A head has come, its end not yet.
    private var reading = false
    /// Requests whose answer has not ended.
    private var unanswered = 0
    /// A request ended during this read: later bytes in it belong to the next one.
    private var endedThisRead = false
    private var timer: Scheduled<Void>?

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head:
            (started, reading) = (false, true)
            unanswered += 1
            arm(context, seconds: API.bodySeconds + 5)
        case .body: break
        case .end:
            reading = false
            endedThisRead = true
            disarm()
        }
        context.fireChannelRead(data)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if !started && !reading && unanswered == 0 && !endedThisRead {
            started = true
            arm(context, seconds: API.headSeconds)
        }
        endedThisRead = false
        context.fireChannelReadComplete()
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .end = unwrapOutboundIn(data), unanswered > 0 { unanswered -= 1 }
        context.write(data, promise: promise)
    }

    func channelInactive(context: ChannelHandlerContext) {
        disarm()
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) { disarm() }

    private func arm(_ context: ChannelHandlerContext, seconds: Int) {
        disarm()
        timer = context.eventLoop.assumeIsolated().scheduleTask(in: .seconds(Int64(seconds))) { [self] in
            timer = nil
            if started {
                // No request yet for the server to answer: the answer is ours.
                var body = ByteBuffer()
                body.writeString("{\"error\":\"the request head did not arrive whole within \(API.headSeconds) s\"}\n")
                let head = HTTPResponse(
                    status: .requestTimeout,
                    headerFields: [.contentType: "application/json", .contentLength: "\(body.readableBytes)", .connection: "close"])
                context.write(wrapOutboundOut(.head(head)), promise: nil)
                context.write(wrapOutboundOut(.body(body)), promise: nil)
                context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
                context.close(promise: nil)
            } else if reading {
                context.close(promise: nil)
            }
        }
    }

    private func disarm() {
        timer?.cancel()
        timer = nil
    }
}

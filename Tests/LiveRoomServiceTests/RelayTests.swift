import LiveRoomMessages
import LiveRoomRTMP
import NIOCore
import XCTest

@testable import LiveRoomService

/// The relay's pure parts: chunks back into stamped tags, and pull URLs.
final class TagSenderTests: XCTestCase {
    static let flvHeader: [UInt8] = [0x46, 0x4C, 0x56, 1, 5, 0, 0, 0, 9, 0, 0, 0, 0]

    /// One FLV tag's bytes.
    static func tag(_ type: UInt8, _ ts: UInt32, _ body: [UInt8]) -> [UInt8] {
        let n = body.count
        return [type, UInt8(n >> 16), UInt8(n >> 8 & 0xFF), UInt8(n & 0xFF), UInt8(ts >> 16 & 0xFF), UInt8(ts >> 8 & 0xFF), UInt8(ts & 0xFF),
                UInt8(ts >> 24), 0, 0, 0] + body + [0, 0, 0, UInt8(11 + n)]
    }

    static func chunk(_ bytes: [UInt8], header: Bool = false) -> MediaChunk {
        var c = MediaChunk()
        c.header = header
        c.payload = ByteBuffer(bytes: bytes)
        return c
    }

    func testTimestampsStartAtZeroAndNeverGoBackAcrossPublishers() throws {
        var s = TagSender()
        XCTAssertEqual(try s.tags(for: Self.chunk(Self.flvHeader, header: true)), [])
        let headers = try s.tags(for: Self.chunk(Self.tag(9, 0, [0x17, 0]) + Self.tag(8, 0, [0xAF, 0]), header: true))
        XCTAssertEqual(headers.map(\.timestamp), [0, 0])
        // A viewer-like output joins mid-stream: the GOP starts at 120 s.
        let gop = try s.tags(for: Self.chunk(Self.tag(9, 120_000, [0x17, 1]) + Self.tag(8, 119_990, [0xAF, 1]) + Self.tag(9, 120_040, [0x27, 1])))
        XCTAssertEqual(gop.map(\.timestamp), [0, 0, 40], "rebased; audio a little before the keyframe is not sent back in time")
        // A new publisher takes over: its clock starts again, ours goes on.
        _ = try s.tags(for: Self.chunk(Self.flvHeader, header: true))
        let replayed = try s.tags(for: Self.chunk(Self.tag(9, 0, [0x17, 0]), header: true))
        XCTAssertEqual(replayed.map(\.timestamp), [40], "headers of the new publisher at the current time")
        let next = try s.tags(for: Self.chunk(Self.tag(9, 5, [0x17, 1]) + Self.tag(9, 45, [0x27, 1])))
        XCTAssertEqual(next.map(\.timestamp), [40, 80])
    }

    func testTagsCutAcrossChunksAndASkipDropsThePartOfATag() throws {
        var s = TagSender()
        let bytes = Self.tag(9, 10, [0x17, 1, 2, 3]) + Self.tag(9, 50, [0x27, 4])
        XCTAssertEqual(try s.tags(for: Self.chunk(Array(bytes[0..<7]))).count, 0)
        XCTAssertEqual(try s.tags(for: Self.chunk(Array(bytes[7...]))).map(\.timestamp), [0, 40])
        _ = try s.tags(for: Self.chunk(Array(Self.tag(9, 90, [0x27, 9])[0..<5])))  // a tag cut short, then chunks lost
        s.skipped()
        XCTAssertEqual(try s.tags(for: Self.chunk(Self.tag(9, 130, [0x17, 1]))).map(\.timestamp), [120])
        XCTAssertThrowsError(try s.tags(for: Self.chunk([0x47] + [UInt8](repeating: 0, count: 20))), "MPEG-TS is not FLV")
    }

    func testHTTPFLVURLs() throws {
        XCTAssertEqual(try HTTPFLVClient.parse("http://cdn.example:8080/live/x.flv?token=1"),
                       .init(host: "cdn.example", port: 8080, path: "/live/x.flv?token=1"))
        XCTAssertEqual(try HTTPFLVClient.parse("http://cdn.example").path, "/")
        XCTAssertEqual(try HTTPFLVClient.parse("http://cdn.example/a").port, 80)
        for bad in ["https://cdn.example/x.flv", "http:///x", "http://h:0/x", "http://h:http/x", "rtmp://h/live"] {
            XCTAssertThrowsError(try HTTPFLVClient.parse(bad), bad)
        }
    }
}

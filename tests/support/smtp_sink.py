"""A real SMTP server for the integration tests (aiosmtpd).

Listens on 127.0.0.1 on a free port, prints `LISTENING <port>`, then one
JSON line per accepted message: {"from", "to", "subject", "data" (the
message as received), "text" (the decoded plain-text body)}. Exits when its stdin closes (the test ends).
"""

import asyncio
import email
import email.policy
import json
import sys

from aiosmtpd.smtp import SMTP


class Handler:
    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content or envelope.content
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        body = msg.get_body(preferencelist=("plain",))
        print(
            json.dumps(
                {
                    "from": envelope.mail_from,
                    "to": list(envelope.rcpt_tos),
                    "subject": str(msg["subject"]),
                    "data": raw.decode("utf-8", errors="replace"),
                    "text": body.get_content() if body is not None else "",
                }
            ),
            flush=True,
        )
        return "250 Message accepted for delivery"


async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(Handler(), hostname="tonari-test-sink"), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]
    print(f"LISTENING {port}", flush=True)
    # Stop when the test closes our stdin.
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()


asyncio.run(main())

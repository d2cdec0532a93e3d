#!/usr/bin/env python3
"""Opens a player page in Debian's Chromium (headless, driven by selenium) and reports, as one
JSON line, whether the video plays: its currentTime, its decoded size, whether a frame drawn
from it is more than one colour, and the size of a screenshot of the page.

Usage: tools/browser-play.py URL SCREENSHOT.png [SECONDS]
Waits up to SECONDS (default 30) for currentTime to pass 3 s. Used by the integration tests
(tools/test installs chromium, chromium-driver and selenium)."""
import json
import os
import sys
import time

os.environ["SE_AVOID_STATS"] = "true"  # else Selenium Manager reaches for the internet first
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

url, shot = sys.argv[1], sys.argv[2]
wait = float(sys.argv[3]) if len(sys.argv) > 3 else 30
options = webdriver.ChromeOptions()
for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--autoplay-policy=no-user-gesture-required", "--mute-audio"]:
    options.add_argument(a)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
state = {}
try:
    driver.get(url)
    deadline = time.time() + wait
    while time.time() < deadline:
        state = driver.execute_script("""
            const v = document.querySelector('video');
            let colours = 0;
            if (v.videoWidth > 0) {
              const c = document.createElement('canvas');
              c.width = 64; c.height = 36;
              const g = c.getContext('2d');
              g.drawImage(v, 0, 0, 64, 36);
              const d = g.getImageData(0, 0, 64, 36).data, seen = new Set();
              for (let i = 0; i < d.length; i += 4) seen.add((d[i] >> 5) << 6 | (d[i + 1] >> 5) << 3 | (d[i + 2] >> 5));
              colours = seen.size;
            }
            return {currentTime: v.currentTime, videoWidth: v.videoWidth, videoHeight: v.videoHeight, colours: colours,
                    mode: document.body.dataset.mode, status: document.getElementById('status').textContent,
                    title: document.getElementById('title').textContent,
                    message: document.getElementById('message').textContent, error: v.error && v.error.message};
        """)
        if state["currentTime"] > 3 and state["colours"] > 1:
            break
        time.sleep(0.5)
    driver.save_screenshot(shot)
    state["screenshotBytes"] = os.path.getsize(shot)
finally:
    driver.quit()
print(json.dumps(state))

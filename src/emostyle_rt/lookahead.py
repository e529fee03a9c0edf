from emostyle_rt._moved import moved_module

moved_module(__name__, "emostyle_rt.video.lookahead")
